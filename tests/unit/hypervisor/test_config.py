"""Config files: sizes, validation errors that name the field, the default config."""

from __future__ import annotations

import tomllib

import pytest

from hypervisor.config import DEFAULT_CONFIG_TOML, load_config, parse_config, parse_size
from hypervisor.errors import ConfigError


@pytest.mark.parametrize("text,value", [
    (4096, 4096), ("4096", 4096), ("8G", 8 * 10**9), ("8000M", 8 * 10**9), ("512Mi", 512 << 20),
    ("1.5Gi", 3 << 29), ("2 GiB", 2 << 30), ("10k", 10_000),
])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "8X", "-1", "G", "1e9", True, -5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_default_config_is_valid_and_documented():
    cfg = parse_config(tomllib.loads(DEFAULT_CONFIG_TOML))
    assert cfg.daemon.grpc_socket.endswith(".sock") and cfg.daemon.grpc_tcp is None
    assert cfg.daemon.metrics_address == "127.0.0.1:9464" and cfg.vm == []


def test_vms_are_parsed(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[daemon]\nsocket_dir = "/tmp"\n'
                 '[[vm]]\nid = 1\nmemory = "8000M"\nshare = 50\ncap = 80\nsocket = "/tmp/x.sock"\n'
                 '[[vm]]\nid = 2\nmemory = 1024\nshare = 30\ndefault_class = "INTERACTIVE"\n')
    cfg = load_config(p)
    assert [(v.id, v.memory, v.share, v.cap) for v in cfg.vm] == [(1, 8_000_000_000, 50, 80), (2, 1024, 30, None)]


@pytest.mark.parametrize("body,needle", [
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 60\n[[vm]]\nid = 2\nmemory = "8G"\nshare = 50\n', "sum to 110"),
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 10\n[[vm]]\nid = 1\nmemory = "8G"\nshare = 10\n', "unique"),
    ('[[vm]]\nid = 1\nmemory = "lots"\nshare = 10\n', "vm[id=1].memory"),
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 10\ncap = 0\n', "vm[id=1].cap"),
    # named by id as in the file, never pydantic's 0-based index (issue 11, item 8)
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 10\n[[vm]]\nid = 7\nmemory = "x"\nshare = 10\n', "vm[id=7].memory"),
    ('[[vm]]\nmemory = "8G"\nshare = 10\n', "vm[#1].id"),
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 10\ndefault_class = "FAST"\n', "default_class"),
    ('[daemon]\nbackend = "tpu"\n', "daemon.backend"),
    ('[daemon]\nunknown_key = 1\n', "unknown_key"),
    ('[scheduler]\nwindow_seconds = 0\n', "window_seconds"),
    ('this is not toml', "not valid TOML"),
    # VM sockets only inside socket_dir, however the path is written
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 10\nsocket = "/tmp/vm1.sock"\n', "outside socket_dir /run/pxos"),
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 10\nsocket = "/run/pxos/../../etc/vm1.sock"\n', "outside socket_dir"),
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 10\nsocket = "../vm1.sock"\n', "outside socket_dir"),
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 10\nsocket = "/run/pxos"\n', "outside socket_dir"),
    ('[[vm]]\nid = 1\nmemory = "8G"\nshare = 10\nsocket = "a.sock"\n'
     '[[vm]]\nid = 2\nmemory = "8G"\nshare = 10\nsocket = "/run/pxos/a.sock"\n', "same socket"),
    # TCP control only with mutual TLS
    ('[daemon]\ngrpc_tcp = "0.0.0.0:50051"\n', "tls_cert, tls_key, tls_client_ca is not"),
    ('[daemon]\ngrpc_tcp = "127.0.0.1:1"\ntls_cert = "c"\ntls_key = "k"\n', "tls_client_ca is not"),
])
def test_invalid_configs_name_the_problem(tmp_path, body, needle):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert needle in str(ei.value) and str(p) in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_relative_vm_sockets_live_in_socket_dir():
    cfg = parse_config({"daemon": {"socket_dir": "/srv/pxos", "grpc_tcp": "[::]:5", "tls_cert": "c",
                                   "tls_key": "k", "tls_client_ca": "a"},
                        "vm": [{"id": 1, "memory": 1, "share": 1, "socket": "vm1.sock"}]})
    assert cfg.vm[0].socket == "vm1.sock" and cfg.daemon.tls_client_ca == "a"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_advisor_table_defaults_off_and_validates():
    assert parse_config({}).advisor.mode == "off"
    cfg = parse_config({"advisor": {"mode": "apply", "endpoint": "https://api.example/v1", "api_key_env": "K"},
                        "vm": [{"id": 1, "memory": "1G", "share": 30, "share_min": 10, "share_max": 50,
                                "description": "batch"}]})
    assert cfg.advisor.mode == "apply" and cfg.vm[0].share_bounds() == (10, 50)
    assert parse_config({"vm": [{"id": 1, "memory": "1G", "share": 30}]}).vm[0].share_bounds() == (30, 30)
    for bad, where in [({"advisor": {"mode": "auto"}}, "advisor.mode"),
                       ({"advisor": {"endpoint": "ftp://x"}}, "advisor.endpoint"),
                       ({"advisor": {"api_key_file": "/k", "api_key_env": "K"}}, "not both"),
                       ({"advisor": {"timeout_seconds": 0}}, "advisor.timeout_seconds"),
                       ({"advisor": {"api_key": "sk-inline"}}, "advisor.api_key"),
                       ({"vm": [{"id": 1, "memory": "1G", "share": 30, "share_min": 40}]}, "share_min")]:
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            parse_config(bad)


def test_vm_cap_bounds_validate():
    vm = {"id": 1, "memory": "1G", "share": 30, "cap": 70}
    assert parse_config({"vm": [{**vm, "cap_min": 60, "cap_max": 90}]}).vm[0].cap_max == 90
    for extra, msg in [({"cap_min": 60}, "together"), ({"cap_min": 80, "cap_max": 90}, "cap 70"),
                       ({"cap_min": 90, "cap_max": 80}, "above")]:
        with pytest.raises(ConfigError, match=msg):
            parse_config({"vm": [{**vm, **extra}]})


def test_libvirt_section_and_vm_domains():
    cfg = parse_config({"libvirt": {"handoff_socket": "vhost-user-gpu.sock", "auto_register": True,
                                    "default_memory": "2Gi", "default_share": 5},
                        "vm": [{"id": 1, "memory": "1G", "share": 30, "domain": "web-1"}]})
    assert (cfg.libvirt.default_memory, cfg.libvirt.default_share, cfg.vm[0].domain) == (2 << 30, 5, "web-1")
    assert parse_config({}).libvirt.handoff_socket is None  # off unless set
    vm = {"memory": "1G", "share": 10}
    for bad, match in [
        ({"vm": [{"id": 1, **vm, "domain": "a", "socket": "vm1.sock"}]}, "not both"),
        ({"vm": [{"id": 1, **vm, "domain": "A-UUID"}, {"id": 2, **vm, "domain": "a-uuid"}]}, "same libvirt domain"),
        ({"libvirt": {"handoff_socket": "/elsewhere/h.sock"}}, "outside socket_dir"),
        ({"libvirt": {"handoff_socket": "vm1.sock"}, "vm": [{"id": 1, **vm, "socket": "vm1.sock"}]},
         "name the same socket"),
        ({"libvirt": {"first_auto_id": 0}}, "first_auto_id"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_config(bad)


def test_compile_options_validate_and_reach_the_compiler():
    cfg = parse_config({})
    assert cfg.scheduler.compiler_options() == {"workers": None, "timeout_s": 5.0, "inline_bytes": 512,
                                                "budget_s": 0.25, "gc_freeze": False}
    cfg = parse_config({"scheduler": {"compile_workers": 0, "compile_timeout_seconds": 2,
                                      "compile_inline_bytes": 0, "compile_budget_ms": 100, "compile_gc_freeze": True}})
    assert cfg.scheduler.compiler_options() == {"workers": 0, "timeout_s": 2.0, "inline_bytes": 0, "budget_s": 0.1,
                                                "gc_freeze": True}
    for bad in ({"compile_workers": 65}, {"compile_workers": -1}, {"compile_workers": "many"},
                {"compile_timeout_seconds": 0}, {"compile_inline_bytes": 65537}, {"compile_budget_ms": 0},
                {"compile_gc_freeze": "sometimes"}):
        with pytest.raises(ConfigError, match=f"scheduler.{next(iter(bad))}"):
            parse_config({"scheduler": bad})
    from hypervisor.compiling import Compiler

    c = Compiler(**parse_config({"scheduler": {"compile_workers": 2}}).scheduler.compiler_options())
    assert c.pool.size == 2 and c.pool.timeout_s == 5.0 and c.inline_bytes == 512 and c.budget.budget_s == 0.25
    c.close()  # nothing was started
