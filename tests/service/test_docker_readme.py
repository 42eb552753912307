"""The README's Docker lines work: the server part runs outside Docker, read from README.md and the Dockerfile.

The image is not built here (no Docker engine), so the test runs what the container would run:
the Dockerfile's ENTRYPOINT + CMD (or the arguments after the image name), with the variables the
``docker run -e`` options pass, their values from the README's ``export`` line run by bash. Two
things differ from the container, both outside the command line: the port is a free one (as the
host side of ``-p``), and the cache holds a prebuilt index (the image prebuilds the sample index at
build time; here the tiny test index is put where the sample index is looked up, so no encoding runs).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from retriever.client import RetrieverClient
from retriever.errors import RetrieverError
from tests.service.test_serve_cli import wait_serving

ROOT = Path(__file__).resolve().parents[2]


def docker_section() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Docker\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert blocks, "README.md's Docker section has no bash block"
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the Dockerfile's final stage (JSON form)."""
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    entry = [json.loads(line.split(None, 1)[1]) for line in lines if line.startswith("ENTRYPOINT ")][-1]
    cmd = [json.loads(line.split(None, 1)[1]) for line in lines if line.startswith("CMD ")][-1]
    return [*entry, *cmd]


def parse_docker_run(line: str) -> tuple[dict[str, str | None], list[str]]:
    """``docker run`` options → (-e variables, command after the image or None for the default)."""
    words = shlex.split(line)
    assert words[:2] == ["docker", "run"], line
    env: dict[str, str | None] = {}
    rest = words[2:]
    while rest and rest[0].startswith("-"):
        option, value = rest[0], rest[1]
        rest = rest[2:]
        if option in ("-e", "--env"):
            name, sep, given = value.partition("=")
            env[name] = given if sep else None
        else:
            assert option in ("-p", "--publish"), f"the test does not know docker option {option}"
    image, args = rest[0], rest[1:]
    assert image == "retriever"
    return env, args


def exported(lines: list[str], name: str) -> str:
    """The value a README ``export NAME=...`` line gives NAME, run by bash as written."""
    line = next(line for line in lines if line.startswith(f"export {name}="))
    result = subprocess.run(["bash", "-c", f'{line}\nprintf %s "${name}"'], capture_output=True, text=True,
                            check=True)
    return result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the README's token line needs openssl")
def test_readme_docker_run_line_serves_and_answers(tiny_index_dir: Path, encoder, tmp_path: Path,
                                                   monkeypatch) -> None:
    from retriever.instructions import source_instruction
    from retriever.records import Source
    from retriever.sample import sample_index_dir

    lines = docker_section()
    run_line = next(line for line in lines if line.startswith("docker run "))
    variables, args = parse_docker_run(run_line)
    env = {name: value if value is not None else exported(lines, name) for name, value in variables.items()}
    token = env["RETRIEVER_AUTH_TOKEN"]
    command = image_command() if not args else ["retriever", *args]
    assert command[0] == "retriever"

    cache = tmp_path / "cache"
    monkeypatch.setenv("RETRIEVER_CACHE_DIR", str(cache))
    shutil.copytree(tiny_index_dir, sample_index_dir(encoder))

    port = free_port()
    child_env = {**os.environ, **env, "RETRIEVER_CACHE_DIR": str(cache), "RETRIEVER_PORT": str(port),
                 "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "retriever", *command[1:]], cwd=ROOT, env=child_env,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=600)
        with RetrieverClient(f"127.0.0.1:{port}", token=token) as client:
            result = client.retrieve("who founded the club?", sources=["table"], top_k=3)
        assert len(result.hits) == 3 and all(hit.source.value == "table" for hit in result.hits)
        assert result.index == "sample"
        # Unset instruction: the default model saved its prompts, so the one for the requested source (README).
        assert result.instruction == source_instruction(Source.TABLE)
        with RetrieverClient(f"127.0.0.1:{port}") as anonymous, pytest.raises(RetrieverError):
            anonymous.retrieve("who founded the club?", top_k=1)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=60)
    assert f"listening on 0.0.0.0:{port}" in err, err
    assert process.returncode == 0, err


def test_readme_token_meets_the_servers_minimum() -> None:
    from retriever.service.config import build_config

    lines = docker_section()
    variables, _ = parse_docker_run(next(line for line in lines if line.startswith("docker run ")))
    assert "RETRIEVER_AUTH_TOKEN" in variables
    if shutil.which("openssl") is None:
        pytest.skip("the README's token line needs openssl")
    env = {name: value if value is not None else exported(lines, name) for name, value in variables.items()}
    config = build_config({"host": "0.0.0.0"}, environ=env)
    assert config.token == env["RETRIEVER_AUTH_TOKEN"] and len(config.token) >= 16
    with pytest.raises(RetrieverError, match="at least 16 characters"):
        build_config({"host": "0.0.0.0"}, environ={"RETRIEVER_AUTH_TOKEN": "secret"})
