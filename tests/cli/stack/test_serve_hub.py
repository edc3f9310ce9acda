"""`yaie serve --model ORG/NAME --revision R` with the model not in the local cache: downloaded
once (from HF_ENDPOINT, here a stand-in on 127.0.0.1) before the workers start, then served."""

from __future__ import annotations

import os

from tests.hub_stand_in import HubStandIn, Repo

REPO = "yaie-test/tiny-llama"


def test_serve_downloads_a_hub_model_at_its_revision_and_serves_it(model_dirs, tools, tmp_path):
    hub = HubStandIn(
        {REPO: Repo({"main": model_dirs["Qwen3ForCausalLM"], "v1": model_dirs["LlamaForCausalLM"]})}
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_TOKEN": "hf_stand_in_token",
        "OMP_NUM_THREADS": "1",
    }
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        env.pop(name, None)
    demo = ("--demo", "The cook says", "--demo-tokens", "4")
    command = tools.serve_command(REPO, 0, 64, "--revision", "v1", *demo)
    try:
        result = tools.run_to_end(command, env, timeout=240)
    finally:
        hub.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The cook says\n") and len(result.stdout) > 15
    commit = hub.repos[REPO].commits["v1"]
    snapshot = tmp_path / "hf-home/hub/models--yaie-test--tiny-llama/snapshots" / commit
    assert (snapshot / "model.safetensors").is_file()
    assert "model.safetensors" in hub.downloaded()
    # Downloaded once, by `yaie serve` itself: the workers and the scheduler load the snapshot.
    assert hub.downloaded().count("model.safetensors") == 1
