"""Every connection is a file descriptor, and so is the provider connection it leads to: `serve`
raises its soft open-files limit to the hard one (systemd starts services at 1024), and warns when
even the hard limit cannot carry `server.max_connections`."""

import resource
import shutil

import pytest

from conftest import BIN, Process, remote_only_config


def serve_under(tmp_path, fake_provider, nofile):
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nname = "all"\nroute = "fake/echo"\n')
    cfg = tmp_path / "g.toml"
    cfg.write_text(remote_only_config(fake_provider).replace("{policy}", str(policy)))
    return Process(["prlimit", f"--nofile={nofile}", str(BIN), "serve", "--config", str(cfg)],
                   env={"SWITCHYARD_LISTEN": "127.0.0.1:0"}, marker="addr=")


def soft_open_files(pid):
    line = next(l for l in open(f"/proc/{pid}/limits") if l.startswith("Max open files"))
    return int(line.split()[3])


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_the_soft_limit_is_raised_and_a_short_hard_limit_is_warned_about(tmp_path, fake_provider):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard < 16448:
        pytest.skip(f"this machine's hard limit ({hard}) cannot show both cases")
    roomy = serve_under(tmp_path, fake_provider, f"1024:{hard}")
    try:
        assert soft_open_files(roomy.proc.pid) == hard
        assert not any("open-files limit" in l for l in roomy.lines), roomy.lines
    finally:
        roomy.stop()
    short = serve_under(tmp_path, fake_provider, "1024:1024")
    try:
        warning = [l for l in short.lines if "open-files limit is below" in l]
        assert warning and "open_files=1024" in warning[0] and "max_connections=8192" in warning[0], short.lines
    finally:
        short.stop()
