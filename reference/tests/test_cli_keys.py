"""nvbox key add/remove/list and --encrypt through the command line."""

import json

import pytest
from click.testing import CliRunner
from nvbox.cli import cli


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch):
    monkeypatch.setenv("NVBOX_KDF_PROFILE", "test")
    monkeypatch.delenv("NVBOX_PASSPHRASE", raising=False)


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def test_key_slot_lifecycle(tmp_path):
    img, k1, pw = tmp_path / "e.nvbox", tmp_path / "k1", tmp_path / "pw"
    k1.write_bytes(bytes(range(32)))
    pw.write_bytes(b"correct horse\n")
    assert run("create", "--encrypt", "--key-file", k1, img).exit_code == 0
    blob = tmp_path / "blob"
    blob.write_bytes(b"tpm state" * 100)
    assert run("put", "--key-file", k1, img, "tpm/permanent", blob).exit_code == 0
    r = run("key", "add", "--key-file", k1, "--new-passphrase-file", pw, "--output", "json", img)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"added": 1}
    slots = json.loads(run("key", "list", "--passphrase-file", pw, "--output", "json", img).stdout)["slots"]
    assert [s["index"] for s in slots] == [0, 1]
    assert [s["kind"] for s in slots] == ["keyfile", "argon2id"]
    # The passphrase (with its trailing newline stripped) opens the image; the
    # environment variable works the same way.
    assert run("get", "--passphrase-file", pw, img, "tpm/permanent").stdout_bytes == blob.read_bytes()
    assert run("ls", img, env={"NVBOX_PASSPHRASE": "correct horse"}).exit_code == 0
    assert run("key", "remove", "--passphrase-file", pw, img, 0).exit_code == 0
    r = run("ls", "--key-file", k1, img)
    assert r.exit_code == 1 and "key.invalid" in r.output
    r = run("key", "remove", "--passphrase-file", pw, img, 1)
    assert r.exit_code == 1 and "key.last_slot" in r.output


def test_missing_and_wrong_keys(tmp_path):
    img, k1, k2 = tmp_path / "e.nvbox", tmp_path / "k1", tmp_path / "k2"
    k1.write_bytes(b"A" * 32)
    k2.write_bytes(b"B" * 32)
    assert run("create", "--encrypt", "--key-file", k1, img).exit_code == 0
    before = img.read_bytes()
    r = run("ls", "--output", "json", img)
    assert r.exit_code == 1 and json.loads(r.stdout)["error"]["code"] == "key.missing"
    r = run("ls", "--key-file", k2, img)
    assert r.exit_code == 1 and "key.invalid" in r.output
    assert img.read_bytes() == before
    r = run("key", "add", "--key-file", k1, img)
    assert r.exit_code == 1 and "usage.argument" in r.output
    r = run("create", "--encrypt", tmp_path / "x.nvbox")
    assert r.exit_code == 1 and "key.missing" in r.output
