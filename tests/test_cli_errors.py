"""A user's mistake on the command line is one clear line on stderr and a non-zero exit code, never a
traceback; every command's --help ends with an example."""
import socket

import pytest

from funnelpilot.report import known_funnels
from funnelpilot_local import cli

FUNNELS = ", ".join(known_funnels(cli.Path(__file__).parents[1] / "infra"))


@pytest.fixture(autouse=True)
def content(monkeypatch):
    """This checkout's content (infra/), as a runtime reads it: what the settings cached at import
    time (no CONTENT_DIR) would otherwise make the lists and fields caches hold for later tests."""
    from funnelpilot.config import config

    monkeypatch.setenv("CONTENT_DIR", str(cli.Path(__file__).parents[1] / "infra"))
    config.cache_clear()
    yield
    config.cache_clear()


def run(capsys, *argv) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv, line", [
    (["report", "--funnel", "nope"], f"error: --funnel 'nope': no such funnel (funnels: {FUNNELS})"),
    (["report", "--from", "2026-13-01"], "error: --from: expected a day as YYYY-MM-DD"),
    (["report", "--from", "2026-02-01", "--to", "2026-01-01"], "error: --from: from is after to"),
    (["contacts", "import", "no-such-file.csv"], "error: no-such-file.csv: no such file"),
    (["contacts", "import", "infra/examples/members.csv", "--map", "Email Address"],
     "error: --map 'Email Address': write HEADER=COLUMN (or HEADER=- to ignore a column)"),
    (["contacts", "import", "infra/examples/members.csv", "--enter", "nope"],
     f"error: --enter 'nope': no such funnel (funnels: {FUNNELS})"),
    (["contacts", "import", "infra/examples/members.csv", "--list", "nope"], "error: --list: unknown list 'nope'"),
])
def test_bad_option_values(capsys, monkeypatch, argv, line):
    monkeypatch.chdir(cli.Path(__file__).parents[1])
    assert run(capsys, *argv) == (2, [line])


def test_no_aws_credentials(capsys, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert run(capsys, "report", "--stack", "prod", "--region", "eu-west-1") == (2, [
        "error: no AWS credentials found: run `aws configure` or set AWS_PROFILE (or leave out --stack to use the "
        "local runtime)"])


def test_busy_port(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(capsys, "serve", "--port", str(port)) == (2, [
            f"error: --port {port}: the port is in use (another `funnelpilot serve`?): stop it or pass another --port"])


def test_every_help_shows_an_example(capsys):
    for command in ("demo", "serve", "funnels", "openapi", "bulk", "report", "cost", "contacts", ["contacts", "import"]):
        with pytest.raises(SystemExit) as done:
            cli.main([*([command] if isinstance(command, str) else command), "--help"])
        assert done.value.code == 0
        assert "example" in capsys.readouterr().out.split("options:")[-1], command
