"""``collabvit serve`` options: --config TOML (every option a key, options given win),
the port range, the warning on a public address without a token, the engine options,
and the Dockerfile (its extras exist, its CMD parses, its HEALTHCHECK passes on a server)."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_process import cli_command, cli_env, free_port

from collabvit import cli
from collabvit.commands import serve
from collabvit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240


def parse(*argv: str) -> object:
    parser, _ = cli._build_parser()
    return parser.parse_args(["serve", *argv])


def completed(*argv: str) -> object:
    args = parse(*argv)
    serve._complete(args)  # type: ignore[arg-type]
    return args


def test_the_file_fills_in_what_the_command_line_does_not_give(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text(
        'server = "fmnist-base"\nmax-batch-size = 16\nmax_queue = 7\nmax-wait-ms = 2\n'
        'access-log = true\nhost = "0.0.0.0"\n'
    )
    args = completed("--config", str(toml), "--max-batch-size", "8", "--host", "127.0.0.1")
    assert args.max_batch_size == 8 and args.host == "127.0.0.1"  # given: they win
    assert args.server == "fmnist-base" and args.max_queue == 7 and args.access_log is True
    assert args.max_wait_ms == 2.0 and isinstance(args.max_wait_ms, float)
    assert args.port == 8000 and args.engine == "uvicorn"  # neither: the defaults
    plain = completed("--server", "x")
    assert plain.max_batch_size == 32 and plain.access_log is False and plain.token is None


def test_every_option_has_a_key(tmp_path: Path) -> None:
    args = parse("--server", "x")
    actions = args.serve_actions
    samples = {int: 3, float: 1.5, None: "x"}
    lines = []
    for dest, action in actions.items():
        if action.nargs == 0:
            value: object = True
        elif action.choices:
            value = list(action.choices)[-1]
        elif action.type in samples or action.type is None:
            value = samples[action.type]
        else:  # the option's own parser: a text it takes
            value = next(t for t in ("3", "0.5", "1:3") if _takes(action.type, t))
        lines.append(f"{dest.replace('_', '-')} = {json.dumps(value)}")
    toml = tmp_path / "all.toml"
    toml.write_text("\n".join(lines) + "\n")
    from collabvit.server.settings import read_config

    read = read_config(toml, actions)
    assert set(read) == set(actions)  # no option without a key
    flags = {a.option_strings[-1].lstrip("-").replace("-", "_") for a in actions.values()}
    assert flags == set(actions)
    assert read["autoscale"] == (1, 3) and read["engine"] == "ray"


def _takes(convert: object, text: str) -> bool:
    try:
        convert(text)  # type: ignore[operator]
    except Exception:
        return False
    return True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max-batch = 4\n", "'max-batch' is not an option of serve (did you mean max-batch-size?)"),
        ('port = "80"\n', "port must be an integer, got '80'"),
        ("max-wait-ms = true\n", "max-wait-ms takes one value, got True"),
        ("access-log = 1\n", "access-log must be true or false, got 1"),
        ('engine = "gunicorn"\n', "engine must be one of uvicorn, ray, got 'gunicorn'"),
        ('autoscale = "4"\n', "autoscale: expected MIN:MAX, e.g. 1:4, got '4'"),
        ("port = [1, 2]\n", "port takes one value"),
        ("port = = 3\n", "not TOML"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError) as caught:
        completed("--config", str(toml))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"--config {toml}: ")


@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_a_port_outside_1_to_65535_is_one_line(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--server", "x", "--port", port]) == 2
    err = capsys.readouterr().err
    assert err == f"collabvit serve: error: --port must be 1..65535, got {port}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--replicas", "2"), "--replicas does not apply to --engine uvicorn"),
        (("--engine", "ray", "--max-connections", "9"), "--max-connections does not apply"),
        (("--engine", "ray", "--replicas", "2", "--autoscale", "1:2"), "not both"),
        (("--ssl-certfile", "cert.pem"), "HTTPS needs both --ssl-certfile and --ssl-keyfile"),
        ((), "--server NAME is required"),
    ],
)
def test_engine_and_tls_options_are_checked_before_any_model_loads(
    argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", *argv]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("collabvit serve: error: ") and message in line


def test_autoscale_takes_min_colon_max(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--server", "x", "--autoscale", "3")
    assert "expected MIN:MAX, e.g. 1:4, got '3'" in capsys.readouterr().err
    assert completed("--server", "x", "--engine", "ray", "--autoscale", "1:4").autoscale == (1, 4)


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("0.0.0.0", None, True),
        ("192.0.2.7", None, True),
        ("my-host.example", None, True),
        ("0.0.0.0", "s3cret", False),
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
    ],
)
def test_a_public_address_without_a_token_is_warned_about(
    host: str,
    token: str | None,
    warned: bool,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLLABVIT_TOKEN", raising=False)
    argv = ["--server", "x", "--host", host, *(["--token", token] if token else [])]
    with caplog.at_level(logging.WARNING, logger="collabvit.commands.serve"):
        serve._server_config(completed(*argv))  # type: ignore[arg-type]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) is warned, warnings
    if warned:
        assert f"serving on {host} without a bearer token" in warnings[0]


# ----------------------------------------------------------------------------- the Dockerfile


def dockerfile() -> dict[str, list[str]]:
    """Instruction -> its arguments (continuation lines joined), in file order."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_the_dockerfile_installs_extras_that_exist() -> None:
    d = dockerfile()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    args = dict(a.split("=", 1) for a in d["ARG"])
    (run,) = [r for r in d["RUN"] if "pip install" in r]
    spec = re.search(r'"\.\[\$\{EXTRAS\}\]"', run)
    assert spec, run
    assert set(args["EXTRAS"].split(",")) <= extras and "ray" in args["EXTRAS"]
    for copied in (c.split()[0] for c in d["COPY"]):
        assert (REPO / copied).exists(), copied


def docker_command() -> list[str]:
    d = dockerfile()
    return [*json.loads(d["ENTRYPOINT"][-1]), *json.loads(d["CMD"][-1])]


def test_the_dockerfile_cmd_is_a_valid_serve_command_line() -> None:
    argv = docker_command()
    assert argv[:2] == ["collabvit", "serve"]
    args = completed(*argv[2:])
    assert args.host == "0.0.0.0" and args.port == 8000
    assert any(e.split()[0] == "8000" for e in dockerfile()["EXPOSE"])


def healthcheck(port: int) -> list[str]:
    (check,) = dockerfile()["HEALTHCHECK"]
    command = json.loads(check[check.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    return [sys.executable, *(c.replace(":8000/", f":{port}/") for c in command[1:])]


def test_a_server_from_a_config_file_passes_the_dockerfile_healthcheck(
    small_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    port = free_port()
    toml = tmp_path / "serve.toml"
    toml.write_text(
        f'server = "{small_pair[1]}"\nport = 1\nmax-batch-size = 3\nmax-queue = 9\nthreads = 1\n'
    )
    command = cli_command("serve", "--config", str(toml), "--port", str(port), "--max-queue", "5")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=cli_env())
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while subprocess.run(healthcheck(port), capture_output=True).returncode != 0:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
        assert health["max_batch_size"] == 3 and health["max_queue"] == 5  # the flag won
        assert health["ready"] is True and health["identity"]["model"] == "small-server"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
