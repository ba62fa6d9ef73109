"""A C-STORE / C-ECHO SCU that owns its socket and runs in the caller's thread.

pynetdicom's association runs reactor threads that poll every millisecond and build one
Python object per PDU: most of the sender's CPU went there. This package speaks the upper
layer protocol itself (PS3.8): one blocking socket per association, every operation
under a deadline, data set fragments written straight from the instance's bytes
(``sendmsg`` of PDU headers and memoryviews; ``sendall`` under TLS). pynetdicom's PDU
classes still encode the A-ASSOCIATE-RQ and decode the AC/RJ; its threads never start.

    pdu.py          PDU framing, association negotiation PDUs
    command.py      C-STORE-RQ / C-ECHO-RQ command sets, their responses
    part10.py       where a Part-10 file's data set starts and which UIDs it carries
    payload.py      a data set as fragments: from memory, a mapped file, or read in blocks
    association.py  one association: open, store, echo, release, abort
"""
