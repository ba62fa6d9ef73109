"""`sendqueue check` and the log lines it causes show no password, also ones holding `@`."""

from __future__ import annotations

from tests.integration.test_cli import sendqueue
from tests.support.ports import free_port

SECRETS = ("orthanc-pa@ss-word", "amqp-pa@ss-word", "dest-pa@ss-word", "admin-token-secret-0001")


def test_check_masks_every_password_in_its_report_and_its_log(tmp_path):
    # Every peer unreachable: each failure is reported with its error text, the places
    # where a URL (and so a password) is most likely quoted.
    config = tmp_path / "sq.toml"
    config.write_text(
        f"""
[orthanc]
url = "http://127.0.0.1:{free_port()}"
username = "sq"
password = "{SECRETS[0]}"
[amqp]
url = "amqp://sq:{SECRETS[1]}@127.0.0.1:{free_port()}/"
[retry]
admin_token = "{SECRETS[3]}"
[[destinations]]
name = "web"
kind = "dicomweb"
url = "http://127.0.0.1:{free_port()}/dicom-web"
username = "u"
password = "{SECRETS[2]}"
"""
    )
    result = sendqueue("check", "--config", str(config))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert output.count("FAIL") == 3, output
    assert "amqp://sq:******@127.0.0.1" in output
    for secret in SECRETS:
        assert secret not in output
        assert secret.split("@")[-1] not in output  # not even the part after an @


def test_credentials_in_a_destination_url_stop_the_start_with_where_they_go(tmp_path):
    config = tmp_path / "sq.toml"
    config.write_text(
        '[[destinations]]\nname = "cloud"\nkind = "dicomweb"\n'
        'url = "https://u:hunter2@pacs.example/dicom-web"\n'
    )
    result = sendqueue("check", "--config", str(config))
    assert result.returncode == 2
    assert "must not contain credentials" in result.stderr
    assert "SENDQUEUE_DEST_CLOUD_PASSWORD" in result.stderr and "hunter2" not in result.stderr
