"""Fall-through Query/Retrieve: what the box does not hold, asked of the PACS.

A C-FIND is answered from the archive first, then from each ``[qr] fall_through`` peer
for what the archive does not hold (``find.RemoteFind``); a C-MOVE or C-GET that names
instances held only there pulls them into the archive and sends each on as it lands
(``retrieve.Pull``). The network layer knows this package only through the
``agent.net.fallthrough_port.FallThrough`` protocol, which ``fallthrough.Remote`` is.
"""
