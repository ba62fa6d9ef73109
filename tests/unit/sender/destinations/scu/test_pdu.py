"""PDU framing and the negotiation PDUs (through pynetdicom's codecs)."""

from __future__ import annotations

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import MaximumLengthNotification

from sendqueue.services.sender.destinations.scu import pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT, JPEG = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"


def test_a_p_data_header_frames_one_pdv():
    header = pdu.pdata_header(3, pdu.LAST, 100)
    assert header == bytes([4, 0, 0, 0, 0, 106, 0, 0, 0, 102, 3, 2])
    body = header[6:] + bytes(100)
    [(context, control, fragment)] = pdu.iter_pdvs(body)
    assert (context, control, len(fragment)) == (3, pdu.LAST, 100)


def test_the_rq_proposes_each_context_with_an_odd_id():
    proposals = [(CT, [JPEG]), (CT, [EXPLICIT, IMPLICIT])]
    raw = pdu.associate_rq("SENDQUEUE", "PACS", proposals)
    rq = A_ASSOCIATE_RQ()
    rq.decode(raw)
    primitive = rq.to_primitive()
    assert primitive.calling_ae_title == "SENDQUEUE" and primitive.called_ae_title == "PACS"
    got = [
        (c.context_id, str(c.abstract_syntax), [str(t) for t in c.transfer_syntax])
        for c in primitive.presentation_context_definition_list
    ]
    assert got == [(1, CT, [JPEG]), (3, CT, [EXPLICIT, IMPLICIT])]


def test_the_ac_maps_accepted_ids_back_to_what_was_proposed():
    proposals = [(CT, [JPEG]), (CT, [EXPLICIT, IMPLICIT])]
    rq = A_ASSOCIATE_RQ()
    rq.decode(pdu.associate_rq("SENDQUEUE", "PACS", proposals))
    primitive = rq.to_primitive()
    contexts = primitive.presentation_context_definition_list
    contexts[0].result, contexts[0].transfer_syntax = 4, [JPEG]  # refused: syntax
    contexts[1].result, contexts[1].transfer_syntax = 0, [IMPLICIT]
    primitive.presentation_context_definition_results_list = contexts
    primitive.result = 0
    primitive.user_information = [MaximumLengthNotification()]
    primitive.maximum_length_received = 32768
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(primitive)
    raw = ac.encode()
    accepted = pdu.decode_ac(raw[6:], proposals)
    assert accepted.contexts == {(CT, IMPLICIT): 3}
    assert accepted.max_pdu == 32768
