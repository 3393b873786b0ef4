"""Store-and-forward: routing, retry policy, per-destination senders, retention's rules
(the queue's rows are the archive's: ``agent.archive.outbox``)."""
