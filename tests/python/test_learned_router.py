"""The learned complexity scorer from the user's side: `switchyard train-router` on a labels file
(either label form, shadow store lines included) writes a model; a policy's `[classifier] model`
makes `/v1/route` score with it, alone or mixed with the baseline (`baseline_weight`); a broken
model file is a configuration error naming the key; `switchyard calibrate --prompts` picks the
threshold for a remote share."""

import json
import subprocess

import httpx

from conftest import BIN, Gateway, gateway_config

HARD = ["Prove the convergence of the series rigorously, case {i}", "Derive the eigenvalues of the operator carefully, case {i}"]
EASY = ["Say hello to my neighbour number {i}", "Tell me a short greeting for friend {i}"]


def write_labels(path, shadow_style=False):
    lines = []
    for i in range(150):
        for template in HARD:
            prompt = template.format(i=i)
            lines.append({"prompt": prompt, "weak_score": 0.0, "strong_score": 1.0, "verdict": "remote"} if shadow_style
                         else {"prompt": prompt, "label": 1})
        for template in EASY:
            prompt = template.format(i=i)
            lines.append({"prompt": prompt, "weak_score": 0.75, "strong_score": 0.25, "verdict": "local"} if shadow_style
                         else {"prompt": prompt, "label": 0})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def train(labels, out):
    return subprocess.run([str(BIN), "train-router", "--labels", str(labels), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)


def check(tmp_path, policy):
    """`switchyard check` on a configuration whose policy is `policy`."""
    policy_file, config = tmp_path / "policy.toml", tmp_path / "gateway.toml"
    policy_file.write_text(policy)
    config.write_text(gateway_config().replace("{policy}", str(policy_file)))
    return subprocess.run([str(BIN), "check", "--config", str(config)], capture_output=True, text=True, timeout=60)


def route(gw, text):
    r = httpx.post(f"{gw.v1}/route", json={"model": "auto", "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r.json()


def test_trained_model_routes_by_what_it_learned(tmp_path):
    labels, model = tmp_path / "labels.jsonl", tmp_path / "model" / "router.json"
    write_labels(labels)
    out = train(labels, model)
    assert out.returncode == 0, out.stderr
    assert "600 examples, 300 where the remote answer is better" in out.stdout
    assert model.exists()
    policy = (f'[classifier]\ncomplexity_threshold = 0.5\nmodel = "{model}"\n\n'
              '[[rule]]\nname = "hard"\nwhen.complexity = "hard"\nroute = "local"\n\n[[rule]]\nname = "easy"\nroute = "local"\n')
    gw = Gateway(tmp_path, gateway_config(), policy)
    try:
        hard = route(gw, "Prove the convergence of this new series rigorously")
        easy = route(gw, "Say hello to my new neighbour")
        assert hard["complexity"] > easy["complexity"], (hard, easy)
        assert hard["rule"] == "hard" and easy["rule"] == "easy"
        assert any("learned scorer" in r for r in hard["reasons"]), hard["reasons"]
    finally:
        gw.stop()


def test_baseline_weight_mixes_in_the_baselines_signals(tmp_path):
    labels, model = tmp_path / "labels.jsonl", tmp_path / "router.json"
    write_labels(labels)
    assert train(labels, model).returncode == 0
    policy = f'[classifier]\nmodel = "{model}"\nbaseline_weight = 0.5\n[[rule]]\nname = "d"\nroute = "local"\n'
    with_check = check(tmp_path, policy)
    assert with_check.returncode == 0, with_check.stderr
    assert f"scorer   learned {model} (trained on " in with_check.stdout, with_check.stdout
    assert "mixed with the baseline at baseline_weight 0.5" in with_check.stdout, with_check.stdout
    gw = Gateway(tmp_path, gateway_config(), policy)
    try:
        # Neither prompt uses a word the model was trained on; only the baseline tells them apart.
        code = route(gw, "```python\ndef area(r):\n    return 3.14159 * r ** 2\n```\nWhy does this fail for r = -2?")
        chat = route(gw, "Good morning to everyone at the office")
        assert code["complexity"] > chat["complexity"] + 0.1, (code, chat)
        assert 0.0 <= chat["complexity"] <= code["complexity"] <= 1.0
        assert any("mixed with the baseline (baseline weight 0.5)" in r for r in code["reasons"]), code["reasons"]
        assert "contains code" in code["reasons"], code["reasons"]
    finally:
        gw.stop()
    # A weight out of range is one problem, on the policy's line, not a second one about the model.
    out_of_range = check(tmp_path, policy.replace("baseline_weight = 0.5", "baseline_weight = 1.2"))
    assert out_of_range.returncode == 1 and "policy.toml:3: classifier.baseline_weight = 1.2 must be between 0 and 1" in out_of_range.stderr
    assert "1 error(s)" in out_of_range.stderr, out_of_range.stderr
    # A model file written before quantiles were recorded cannot be mixed: a configuration error.
    old = json.loads(model.read_text())
    del old["quantiles"]
    model.write_text(json.dumps(old))
    refused = check(tmp_path, policy)
    assert refused.returncode == 1 and "classifier.model" in refused.stderr and "train-router" in refused.stderr, refused.stderr


def test_shadow_store_lines_are_labels(tmp_path):
    labels = tmp_path / "shadow.jsonl"
    write_labels(labels, shadow_style=True)
    out = train(labels, tmp_path / "m.json")
    assert out.returncode == 0, out.stderr
    assert "300 where the remote answer is better" in out.stdout


def test_bad_labels_and_bad_models_are_refused(tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"prompt": "x", "label": 1}\n{"prompt": "y"}\n')
    out = train(labels, tmp_path / "m.json")
    assert out.returncode != 0 and "labels.jsonl:2" in out.stderr, out.stderr
    labels.write_text('{"prompt": "x", "label": 1}\n')
    out = train(labels, tmp_path / "m.json")
    assert out.returncode != 0 and "both kinds" in out.stderr, out.stderr

    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "something else"}')
    refused = check(tmp_path, f'[classifier]\nmodel = "{broken}"\n[[rule]]\nname = "d"\nroute = "local"\n')
    assert refused.returncode == 1 and "classifier.model" in refused.stderr, refused.stderr


CODE_REVIEW = [{"role": "user", "content": "Analyze this code:\n```python\ndef f(): pass\n```"}]


def assert_calibrated_split_is_live(tmp_path, lines, share):
    """`calibrate` on `lines` gives a threshold that splits the same requests, sent live (through
    `explain`, the live router's planning), as it reports."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = subprocess.run([str(BIN), "calibrate", "--config", "config/gateway.toml", "--prompts", str(prompts),
                          "--remote-share", str(share)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    threshold = float(out.stdout.splitlines()[0].split("=")[1])
    reported = int(out.stdout.split("remote: ")[1].split(" of ")[0])
    live = []
    for line in lines:
        body = {"model": "auto", "messages": [{"role": "user", "content": line["prompt"]}]} if "prompt" in line else {"model": "auto", **line}
        r = subprocess.run([str(BIN), "explain", "--config", "config/gateway.toml", "-"], input=json.dumps(body),
                           capture_output=True, text=True, timeout=60)
        live.append(json.loads(r.stdout)["complexity"])
    assert sum(score >= threshold for score in live) == reported, (out.stdout, live)


def test_calibrates_split_is_the_live_routers_split_for_bare_prompts(tmp_path):
    # Two prompts scoring 0.0002 apart: a bare `{"prompt"}` line must be scored exactly as the same
    # text sent as a chat message is, or the printed threshold gives another split live.
    assert_calibrated_split_is_live(tmp_path, [{"prompt": "Implement a red-black tree in Rust with proofs of invariants"},
                                               {"prompt": "Write a python function to sort a list and analyze complexity."}], 0.5)


def test_calibrate_scores_a_chat_body_with_its_tools(tmp_path):
    # "Hi" offering a tool scores above a long plain prompt only if its tools count, as they do live.
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    lines = [{"messages": [{"role": "user", "content": "Hi"}], "tools": tools},
             {"prompt": "Tell me a story about a cat and a dog. " * 25}]
    assert_calibrated_split_is_live(tmp_path, lines, 0.5)


def test_calibrate_picks_the_threshold_for_a_remote_share(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "Hi"}] * 6 + [{"prompt": "Prove step by step that the algorithm is optimal and derive its complexity."}] * 2 \
        + [{"model": "auto", "messages": CODE_REVIEW}, {"messages": CODE_REVIEW}]  # `model` may be left out
    # Written with the byte-order mark some editors put first.
    prompts.write_text("\ufeff" + "\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    out = subprocess.run([str(BIN), "calibrate", "--config", "config/gateway.toml", "--prompts", str(prompts),
                          "--remote-share", "0.2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("complexity_threshold = "), out.stdout
    assert "remote: 2 of 10 prompts (20.0 %)" in out.stdout, out.stdout
    assert "warning" not in out.stderr, out.stderr
    # Six prompts tie: no threshold sends 60 % remote, and the command says why.
    tied = subprocess.run([str(BIN), "calibrate", "--config", "config/gateway.toml", "--prompts", str(prompts),
                           "--remote-share", "0.6"], capture_output=True, text=True, timeout=60)
    assert tied.returncode == 0, tied.stderr
    assert "warning: 6 of 10 prompts (60.0 %) score" in tied.stderr, tied.stderr
    bad = subprocess.run([str(BIN), "calibrate", "--config", "config/gateway.toml", "--prompts", str(prompts)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
