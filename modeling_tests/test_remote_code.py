"""Hub publishing: a saved folder loads with `trust_remote_code=True` in a process where `transformers_parrot` is NOT
importable, through the Auto classes and `pipeline`, with logits identical to the package's model.

With `PARROT_OTHER_PYTHONS` set to interpreters of venvs with other transformers releases (`os.pathsep`-separated;
`.ci/run` sets 4.57.x, 5.23.x and the newest release on PyPI), the same folder is also loaded and generated from
there (saved on 5.x → loaded on 4.57 and the reverse).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from fixtures import QUESTIONS, chat, make_image

LOADER = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transformers_parrot" or name.startswith("transformers_parrot."):
            raise ImportError("transformers_parrot is blocked in this process")
sys.meta_path.insert(0, Block())
try:
    import transformers_parrot  # noqa: F401
    raise SystemExit("transformers_parrot should not be importable here")
except ImportError:
    pass

import torch, transformers
from PIL import Image
folder, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(int(sys.argv[4]))  # the parent's: bitwise-identical logits need the same reduction order
major = int(transformers.__version__.split(".")[0])
Auto = transformers.AutoModelForImageTextToText if major >= 5 else transformers.AutoModelForVision2Seq
processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = Auto.from_pretrained(folder, trust_remote_code=True).eval()
base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
image = Image.open(folder + "/test_image.png")
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sys.argv[3]}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
batch = processor(text=[text], images=[image], return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
    hidden = base(**batch).last_hidden_state
    generated = model.generate(**batch, max_new_tokens=8, do_sample=False)
pipe = transformers.pipeline("image-text-to-text", model=model, processor=processor)
chat = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": sys.argv[3]}]}]
reply = pipe(text=chat, max_new_tokens=4, generate_kwargs={"do_sample": False})[0]["generated_text"]
torch.save({"logits": logits, "hidden": hidden, "input_ids": batch["input_ids"], "generated": generated}, out)
print(json.dumps({
    "version": transformers.__version__,
    "classes": [type(model).__module__, type(base).__name__, type(config).__module__, type(processor).__module__],
    "reply_type": type(reply).__name__,
    "parrot_modules": sorted(m for m in sys.modules if m.startswith("transformers_parrot") and sys.modules[m]),
}))
"""


def _pythons():
    yield pytest.param(sys.executable, id="same-version")
    others = [p for p in os.environ.get("PARROT_OTHER_PYTHONS", "").split(os.pathsep) if p]
    for index, other in enumerate(others):
        yield pytest.param(other, id=f"other-{index}")
    if not others:
        yield pytest.param(None, id="other", marks=pytest.mark.skip(reason="PARROT_OTHER_PYTHONS unset"))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(model, processor) with a non-default RoPE base: transformers 5 and 4 store it differently."""
    from fixtures import sharpen_routing

    from transformers_parrot.tiny import tiny_model

    model, processor = tiny_model(seed=2, text_config={"rope_theta": 500000.0})
    sharpen_routing(model)
    return model.eval(), processor


@pytest.fixture(scope="module")
def saved_repo(tmp_path_factory, published):
    model, processor = published
    folder = tmp_path_factory.mktemp("parrot-repo")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    make_image(11).save(folder / "test_image.png")
    return folder


def test_saved_folder_is_self_contained(saved_repo):
    config = json.loads((saved_repo / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_parrot.ParrotConfig",
        "AutoModel": "modeling_parrot.ParrotModel",
        "AutoModelForImageTextToText": "modeling_parrot.ParrotForConditionalGeneration",
        "AutoModelForVision2Seq": "modeling_parrot.ParrotForConditionalGeneration",
    }
    for name in ("configuration_parrot.py", "modeling_parrot.py", "processing_parrot.py"):
        text = (saved_repo / name).read_text()
        assert "transformers_parrot" not in text, f"{name} imports the package"
    processor_files = [p for p in saved_repo.glob("*.json") if "processor" in p.name]
    assert any("AutoProcessor" in json.dumps(json.loads(p.read_text()).get("auto_map", {})) for p in processor_files)


@pytest.mark.compat
@pytest.mark.parametrize("python", list(_pythons()))
def test_remote_code_loads_without_the_package(python, saved_repo, published, tmp_path):
    model, processor = published
    out = tmp_path / "remote.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [python, "-c", LOADER, str(saved_repo), str(out), QUESTIONS["ru"], str(torch.get_num_threads())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["parrot_modules"] == []
    assert all(module.startswith("transformers_modules") for module in report["classes"][::2]), report
    assert report["classes"][1] == "ParrotModel"

    remote = torch.load(out)
    text = processor.apply_chat_template(chat(QUESTIONS["ru"]), add_generation_prompt=True, tokenize=False)
    from PIL import Image

    batch = processor(text=[text], images=[Image.open(saved_repo / "test_image.png")], return_tensors="pt")
    assert torch.equal(remote["input_ids"], batch["input_ids"])
    with torch.no_grad():
        logits = model(**batch).logits
        generated = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert torch.equal(remote["generated"], generated), (report["version"], remote["generated"], generated)
    if report["version"] == transformers.__version__:
        # bitwise equal in a fresh test process; after other tests have reshaped torch's CPU thread pools the
        # matmul reduction order can differ in the last float32 bit (measured 6e-8)
        torch.testing.assert_close(remote["logits"], logits, rtol=1e-6, atol=1e-6)
    else:  # another transformers major: same weights and equations, kernels may differ in the last bits
        torch.testing.assert_close(remote["logits"], logits, rtol=1e-4, atol=1e-4)


def test_package_loads_saved_folder_without_remote_code(saved_repo, published):
    """The package itself also loads the folder (no remote code needed when it is installed)."""
    model = transformers.AutoModelForImageTextToText.from_pretrained(saved_repo)
    assert type(model).__module__ == "transformers_parrot.models.parrot.modeling_parrot"
    torch.testing.assert_close(model.lm_head.weight, published[0].lm_head.weight)
    text_config = model.config.text_config
    rope_theta = getattr(text_config, "rope_parameters", None) or {"rope_theta": text_config.rope_theta}
    assert rope_theta["rope_theta"] == 500000.0
    assert Path(saved_repo / "generation_config.json").exists()
