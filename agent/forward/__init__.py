"""Store-and-forward: routing, the durable queue, per-destination senders, retention."""
