"""An index written by an older version opens, keeps its rows and gains the newer columns."""

from __future__ import annotations

import sqlite3

from sendqueue.services.retry.parking.index import Filters, ParkedIndex, ParkedItem

#: The parked table as versions before `patient_name` made it.
_OLD = (
    "CREATE TABLE parked (id TEXT PRIMARY KEY, destination, orthanc_id, sop_instance_uid,"
    " series_instance_uid, study_instance_uid, patient_id, modality, attempts,"
    " first_failed_at, last_failed_at, parked_at, reason, reason_class,"
    " pass_seq INTEGER NOT NULL DEFAULT 0)"
)


def test_an_index_without_patient_name_is_upgraded_in_place(tmp_path):
    path = tmp_path / "parked.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(_OLD)
        db.execute(
            "INSERT INTO parked VALUES ('old', 'pacs', 'o1', '1.2.3', '1.2', '1', 'P1', 'CT',"
            " 3, NULL, NULL, 10.0, 'refused', 'dimse-a9xx', 1)"
        )
    db.close()
    index = ParkedIndex(path)
    try:
        [old] = index.page(Filters(), 10)
        assert (old.id, old.patient_id, old.patient_name, old.attempts) == ("old", "P1", "", 3)
        new = ParkedItem(id="new", destination="pacs", patient_name="Doe^Jane", parked_at=20.0)
        index.add([new], pass_seq=2)
        assert [i.patient_name for i in index.page(Filters(), 10)] == ["", "Doe^Jane"]
        assert index.seen_in_pass(["new", "old"], 2) == {"new"}
    finally:
        index.close()


OLD_COLUMNS = (
    "id TEXT PRIMARY KEY, destination, orthanc_id, sop_instance_uid, series_instance_uid,"
    " study_instance_uid, patient_id, modality, attempts, first_failed_at, last_failed_at,"
    " parked_at, reason, reason_class, pass_seq INTEGER NOT NULL DEFAULT 0"
)


def test_an_old_index_gains_the_orthanc_job_columns(tmp_path):
    path = tmp_path / "parked.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE parked ({OLD_COLUMNS})")
        db.execute(
            "INSERT INTO parked VALUES ('old', 'pacs', 'o', 's', '', '', '', '', 1, NULL, NULL,"
            " 1.0, 'refused', 'dimse-a9xx', 0)"
        )
    index = ParkedIndex(path)
    try:
        index.add([ParkedItem(id="new", destination="pacs", parked_at=2.0, orthanc_job="j1")])
        old, new = index.page(Filters(), 10)
        assert (old.id, old.source, old.orthanc_job, old.orthanc_job_instances) == (
            "old",
            "",
            "",
            0,
        )
        assert (new.id, new.orthanc_job) == ("new", "j1")
        assert [i.id for i in index.page(Filters(orthanc_job="j1"), 10)] == ["new"]
        assert index.count(Filters(orthanc_job="j1")) == 1
    finally:
        index.close()
