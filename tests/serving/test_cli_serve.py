"""`vlrl serve` options: `--image-root`, `--max-image-pixels`, and the warning for a public address."""

from __future__ import annotations

import pytest

from vlrl.cli import main
from vlrl.serving.server import ChatServer, is_loopback


@pytest.fixture
def served(monkeypatch):
    """Servers `vlrl serve` builds, which stop at once (as on Ctrl-C) instead of serving."""
    servers: list[ChatServer] = []

    def stop(server: ChatServer) -> None:
        servers.append(server)
        raise KeyboardInterrupt

    monkeypatch.setattr(ChatServer, "serve_forever", stop)
    return servers


def test_binding_a_non_loopback_address_warns_in_one_line(tiny_models, served, capsys):
    assert main(["serve", str(tiny_models["qwen2_vl"]), "--host", "0.0.0.0", "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert "vlrl serve: warning: listening on 0.0.0.0, reachable from other machines" in err
    assert main(["serve", str(tiny_models["qwen2_vl"]), "--port", "0"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_image_options_reach_the_server(tiny_models, served, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    args = ["serve", str(tiny_models["qwen2_vl"]), "--port", "0"]
    assert main([*args, "--image-root", str(tmp_path / "a"), "--image-root", str(tmp_path / "b")]) == 0
    assert main([*args, "--max-image-pixels", "1000"]) == 0
    assert main([*args, "--max-image-pixels", "0"]) == 0
    with_roots, limited, unlimited = (server.images for server in served)
    assert with_roots.roots == (str(tmp_path / "a"), str(tmp_path / "b"))
    assert with_roots.max_pixels == 64_000_000 and limited.max_pixels == 1000
    assert unlimited.roots == () and unlimited.max_pixels is None


def test_a_bad_image_root_is_named_before_the_model_loads(tmp_path, capsys):
    # The model folder is missing too: the option must be checked first.
    assert main(["serve", str(tmp_path / "no_model"), "--image-root", str(tmp_path / "nope")]) == 2
    assert f"--image-root '{tmp_path / 'nope'}' is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("127.8.9.1", True), ("0.0.0.0", False), ("10.0.0.2", False)]
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
