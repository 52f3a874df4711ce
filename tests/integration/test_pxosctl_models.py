"""pxosctl model add / list / remove against the real daemon, and /metrics' model series."""

from __future__ import annotations

import json
import urllib.request

from hypervisor.ctl import EXIT_FAILED, EXIT_OK
from tests.integration.test_pxosctl import ctl, daemon, ok_json  # noqa: F401 (fixtures)
from tests.support.tiny_gguf import write_tiny_llama


def test_model_add_list_remove(ctl, daemon, tmp_path):  # noqa: F811
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    code, out, _ = ctl("model", "add", "tiny", path)
    assert code == EXIT_OK and "model tiny loaded: 20 tensors" in out
    models = ok_json(ctl, "model", "list")["models"]
    assert [(m["name"], m["architecture"], m["tensors"], m["users"]) for m in models] == [("tiny", "llama", 20, [])]
    assert models[0]["config"]["n_layer"] == 2 and models[0]["bytes"] == models[0]["device_bytes"] > 0
    code, _, err = ctl("model", "add", "tiny", path)
    assert code == EXIT_FAILED and "ALREADY_EXISTS" in err
    code, _, err = ctl("model", "add", "other", tmp_path / "missing.gguf")
    assert code == EXIT_FAILED and "no such file" in err
    daemon.hv.register_vm(1, 1, 10)
    daemon.hv.open_model(1, "tiny", session=2)
    code, _, err = ctl("model", "remove", "tiny")
    assert code == EXIT_FAILED and "open in VM 1" in err
    host, port = daemon.metrics.address
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    assert 'pxos_model_users{model="tiny"} 1.0' in text
    daemon.hv.reset_vm(1)
    assert ok_json(ctl, "model", "remove", "tiny") == {"name": "tiny", "removed": True}
    code, out, _ = ctl("model", "list")
    assert code == EXIT_OK and "tiny" not in out
    assert json.loads(ctl("--json", "model", "list")[1]) == {"models": []}
