"""Parrot's model: the MoE against the paper's equations, label-free routing, transformers conventions, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from fixtures import QUESTIONS, chat, make_image, sharpen_routing

from transformers_parrot import ParrotConfig, ParrotForConditionalGeneration
from transformers_parrot.models.parrot._compat import CHECKPOINTING_ARG
from transformers_parrot.tiny import tiny_model


def prompt_text(processor, question, answer=None, n_images=1, generation_prompt=True):
    return processor.apply_chat_template(
        chat(question, answer, n_images), add_generation_prompt=generation_prompt and answer is None, tokenize=False
    )


# ----------------------------------------------------------------------------------------------------------------
# Independent computation of the notes' equations (parrot-notes §1), one image at a time with explicit loops.
# ----------------------------------------------------------------------------------------------------------------
def reference_moe(model, visual_tokens: torch.Tensor, guidance_ids: list[int]):
    """X' = Σ_e w_e E_e(X) + λX for one image X (L, D), guided by the word embeddings of `guidance_ids`."""
    config = model.config
    embed = model.get_input_embeddings().weight
    text = embed[torch.tensor(guidance_ids)]  # (n, D)
    hidden = visual_tokens.shape[-1]
    attention = torch.softmax(visual_tokens[0] @ text.T / math.sqrt(hidden), dim=-1)  # CLS query
    guidance = attention @ text
    router_logits = model.model.moe.gate.weight @ guidance  # W_g g, no bias
    weights = torch.softmax(router_logits, dim=-1)
    chosen = range(config.num_experts)
    if config.moe_top_k is not None:
        top = torch.topk(weights, config.moe_top_k)
        chosen = top.indices.tolist()
        weights = torch.zeros_like(weights).index_copy(0, top.indices, top.values / top.values.sum())
    experts = model.model.moe.experts
    inter = config.moe_intermediate_size
    output = config.moe_residual_weight * visual_tokens
    for e in chosen:
        w_gate, w_up = experts.gate_up_proj[e, :inter], experts.gate_up_proj[e, inter:]
        w_down = experts.down_proj[e]  # (D, I)
        expert_out = (F.silu(visual_tokens @ w_gate.T) * (visual_tokens @ w_up.T)) @ w_down.T
        output = output + weights[e] * expert_out
    return output, router_logits


def guidance_ids_of(processor, question, n_images=1):
    """The prompt's token ids as generation sees them, minus image tokens: the notes' text guidance."""
    ids = processor(
        text=prompt_text(processor, question, n_images=n_images), images=[make_image()] * n_images, return_tensors="pt"
    )["input_ids"][0].tolist()
    return [t for t in ids if t != processor.image_token_id]


@pytest.mark.compat
@pytest.mark.parametrize("top_k", [None, 2])
def test_moe_matches_reference_equations(top_k):
    """A batch of three samples (2 images, text only, 1 image) with answers: every image's routing and mixed
    features equal the per-image reference computed from the bare prompt."""
    model, processor = tiny_model(seed=3, moe_top_k=top_k, moe_residual_weight=0.37)
    sharpen_routing(model)
    questions = [QUESTIONS["zh"], "Just text, no image here.", QUESTIONS["ar"]]
    n_images = [2, 0, 1]
    texts = [prompt_text(processor, q, "答案 / answer", n) for q, n in zip(questions, n_images)]
    images = [[make_image(1), make_image(2)], [], [make_image(3)]]
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_router_logits=True)
        projected = model.get_image_features(batch["pixel_values"]).pooler_output
    assert out.router_logits.shape == (3, model.config.num_experts)
    image_owner = [0, 0, 2]
    for i, sample in enumerate(image_owner):
        guidance = guidance_ids_of(processor, questions[sample], n_images[sample])
        with torch.no_grad():
            expected, expected_logits = reference_moe(model, projected[i], guidance)
        torch.testing.assert_close(out.router_logits[i], expected_logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.moe_image_features[i], expected, rtol=1e-4, atol=1e-5)
    # The two images of sample 0 share the sample's text but have different CLS queries.
    assert not torch.allclose(out.router_logits[0], out.router_logits[1])


def test_top_k_one_uses_only_the_best_expert():
    model, processor = tiny_model(seed=4, moe_top_k=1)
    sharpen_routing(model)
    batch = processor(text=[prompt_text(processor, QUESTIONS["pt"])], images=[make_image()], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_router_logits=True)
        projected = model.get_image_features(batch["pixel_values"]).pooler_output[0]
    best = int(out.router_logits[0].argmax())
    experts, inter = model.model.moe.experts, model.config.moe_intermediate_size
    w_gate, w_up, w_down = (
        experts.gate_up_proj[best, :inter],
        experts.gate_up_proj[best, inter:],
        experts.down_proj[best],
    )
    with torch.no_grad():
        expected = (F.silu(projected @ w_gate.T) * (projected @ w_up.T)) @ w_down.T + 0.1 * projected
    torch.testing.assert_close(out.moe_image_features[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.compat
def test_use_moe_false_bypasses_the_moe():
    model, processor = tiny_model(seed=5, use_moe=False)
    batch = processor(text=[prompt_text(processor, QUESTIONS["en"])], images=[make_image()], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_router_logits=True)
        projected = model.get_image_features(batch["pixel_values"]).pooler_output
    assert out.router_logits is None
    torch.testing.assert_close(out.moe_image_features, projected)


def test_router_logits_only_on_request(tiny):
    model, processor = tiny
    batch = processor(text=[prompt_text(processor, QUESTIONS["en"])], images=[make_image()], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).router_logits is None
        assert model(**batch, output_router_logits=True).router_logits.shape == (1, model.config.num_experts)


# ----------------------------------------------------------------------------------------------------------------
# The router's guidance is the prompt only, in every code path (issue #2, behaviour 2).
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.compat
def test_router_invariance_across_code_paths(tiny):
    model, processor = tiny
    question, answer = QUESTIONS["ru"], "Круг красный."
    image = make_image(7)
    with torch.no_grad():
        bare = processor(text=[prompt_text(processor, question)], images=[image], return_tensors="pt")
        reference = model(**bare, output_router_logits=True).router_logits[0]

        full_text = prompt_text(processor, question, answer)
        full = processor(text=[full_text], images=[image], return_tensors="pt")
        backbone = model.model(**full, output_router_logits=True).router_logits[0]
        labels = full["input_ids"].clone()
        with_labels = model(**full, labels=labels, output_router_logits=True)
        assert with_labels.loss is not None

        other = prompt_text(processor, "A much longer unrelated question " * 3, "and its answer", n_images=1)
        padded = {}
        for side in ("left", "right"):
            batch = processor(
                text=[other, full_text],
                images=[[make_image(8)], [image]],
                padding=True,
                padding_side=side,
                return_tensors="pt",
            )
            assert (batch["attention_mask"] == 0).any()
            padded[side] = model(**batch, output_router_logits=True).router_logits[1]

        # Negative control: the same words inside the user turn DO move the router.
        leaked = processor(text=[prompt_text(processor, question + " " + answer)], images=[image], return_tensors="pt")
        leaked_logits = model(**leaked, output_router_logits=True).router_logits[0]

    for name, logits in [
        ("backbone", backbone),
        ("labels", with_labels.router_logits[0]),
        ("left", padded["left"]),
        ("right", padded["right"]),
    ]:
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert not torch.allclose(leaked_logits, reference, rtol=1e-3, atol=1e-3)


def test_multi_turn_answers_never_guide(tiny):
    model, processor = tiny
    image = make_image(9)
    turns = chat(QUESTIONS["tr"], "Kırmızı.") + [
        {"role": "user", "content": [{"type": "text", "text": "Emin misin?"}]}
    ]
    changed = copy.deepcopy(turns)
    changed[1]["content"][0]["text"] = "Mavi, tamamen farklı bir cevap."
    with torch.no_grad():
        logits = []
        for conversation in (turns, changed):
            text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            batch = processor(text=[text], images=[image], return_tensors="pt")
            logits.append(model(**batch, output_router_logits=True).router_logits[0])
    torch.testing.assert_close(logits[0], logits[1])


@pytest.mark.compat
def test_inputs_embeds_call_routes_like_input_ids(tiny):
    model, processor = tiny
    text = prompt_text(processor, QUESTIONS["zh"], "红色")
    batch = processor(
        text=[text, prompt_text(processor, QUESTIONS["en"])],
        images=[[make_image(1)], [make_image(2)]],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    with torch.no_grad():
        by_ids = model(**batch, output_router_logits=True)
        embeds = model.get_input_embeddings()(batch["input_ids"])
        by_embeds = model(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            output_router_logits=True,
        )
    torch.testing.assert_close(by_embeds.router_logits, by_ids.router_logits)
    torch.testing.assert_close(by_embeds.logits, by_ids.logits)


# ----------------------------------------------------------------------------------------------------------------
# transformers conventions
# ----------------------------------------------------------------------------------------------------------------
def test_get_image_features_is_tower_plus_projector(tiny):
    model, processor = tiny
    pixel_values = processor(text=["<image>"], images=[make_image()], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = model.get_image_features(pixel_values)
        tower = model.model.vision_tower(pixel_values, output_hidden_states=True)
        expected = model.model.multi_modal_projector(tower.hidden_states[-2])  # CLS kept ("full")
    assert features.pooler_output.shape == (1, model.config.image_seq_length, model.config.text_config.hidden_size)
    torch.testing.assert_close(features.pooler_output, expected)


@pytest.mark.compat
def test_get_image_features_refuses_arguments_it_does_not_use(tiny):
    model, processor = tiny
    pixel_values = processor(text=["<image>"], images=[make_image()], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        for owner in (model, model.model):
            with pytest.raises(TypeError, match="image_sizes"):
                owner.get_image_features(pixel_values, image_sizes=[(30, 30)])
        as_tuple = model.get_image_features(pixel_values, return_dict=False)
    assert isinstance(as_tuple, tuple)


@pytest.mark.compat
def test_pixel_values_checked_once_per_forward(tiny, monkeypatch):
    model, processor = tiny
    batch = processor(text=[prompt_text(processor, QUESTIONS["en"])], images=[make_image()], return_tensors="pt")
    calls = []
    check = type(model.model)._check_pixel_values
    monkeypatch.setattr(type(model.model), "_check_pixel_values", lambda self, pv: calls.append(pv) or check(self, pv))
    with torch.no_grad():
        model(**batch)
    assert len(calls) == 1


@pytest.mark.compat
def test_image_hidden_states_is_a_deprecated_alias_of_moe_image_features(tiny):
    model, processor = tiny
    batch = processor(text=[prompt_text(processor, QUESTIONS["tr"])], images=[make_image()], return_tensors="pt")
    with torch.no_grad():
        outputs = [model(**batch), model.model(**batch)]
    for out in outputs:
        assert "image_hidden_states" not in out and out.moe_image_features is not None
        with pytest.warns(FutureWarning, match="moe_image_features"):
            assert out.image_hidden_states is out.moe_image_features


@pytest.mark.compat
def test_tuple_and_dict_outputs_agree(tiny):
    model, processor = tiny
    batch = processor(
        text=[prompt_text(processor, QUESTIONS["en"], "Red.")], images=[make_image()], return_tensors="pt"
    )
    labels = batch["input_ids"].clone()
    with torch.no_grad():
        as_dict = model(**batch, labels=labels, output_router_logits=True)
        as_tuple = model(**batch, labels=labels, output_router_logits=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    torch.testing.assert_close(as_tuple[-1], as_dict.router_logits)


def test_logits_to_keep(tiny):
    model, processor = tiny
    batch = processor(text=[prompt_text(processor, QUESTIONS["en"])], images=[make_image()], return_tensors="pt")
    with torch.no_grad():
        full = model(**batch).logits
        last = model(**batch, logits_to_keep=1).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last[:, -1], full[:, -1])


@pytest.mark.compat
def test_sdpa_and_eager_agree_and_reach_both_submodels(tmp_path):
    model, processor = tiny_model(seed=6)
    model.save_pretrained(tmp_path)
    batch = processor(text=[prompt_text(processor, QUESTIONS["pt"])], images=[make_image()], return_tensors="pt")
    outputs = {}
    for implementation in ("eager", "sdpa"):
        loaded = ParrotForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert loaded.config.text_config._attn_implementation == implementation
        assert loaded.config.vision_config._attn_implementation == implementation
        with torch.no_grad():
            outputs[implementation] = loaded(**batch, output_router_logits=True)
    torch.testing.assert_close(outputs["eager"].logits, outputs["sdpa"].logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs["eager"].router_logits, outputs["sdpa"].router_logits, rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_gives_same_gradients():
    model, processor = tiny_model(seed=7)
    batch = processor(
        text=[prompt_text(processor, QUESTIONS["en"], "Red.")], images=[make_image()], return_tensors="pt"
    )
    grads = []
    for checkpointing in (False, True):
        trained = copy.deepcopy(model).train()
        if checkpointing:
            enable = getattr(trained, f"{CHECKPOINTING_ARG}_enable")
            enable(**{f"{CHECKPOINTING_ARG}_kwargs": {"use_reentrant": False}})
            assert trained.model.language_model.gradient_checkpointing
        trained(**batch, labels=batch["input_ids"]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in trained.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert "model.moe.experts.gate_up_proj" in grads[0] and "model.moe.gate.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(
            grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_text_only_batch_touches_multimodal_parameters_only_in_distributed_training(monkeypatch):
    """A text-only batch in multi-process training gives every vision/projector/MoE parameter a zero gradient (so
    DDP without find_unused_parameters and FSDP/ZeRO-3 ranks stay in step) and leaves the loss unchanged;
    single-process training and inference do not pay for it."""
    import transformers_parrot.models.parrot.modeling_parrot as modeling

    model, processor = tiny_model(seed=3)
    model.train()
    batch = processor(text=[prompt_text(processor, QUESTIONS["tr"], "Merhaba.", n_images=0)], return_tensors="pt")
    multimodal = ("model.vision_tower.", "model.multi_modal_projector.", "model.moe.")

    def run(inputs=batch):
        model.zero_grad(set_to_none=True)
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if n.startswith(multimodal)}

    image_batch = processor(
        text=[prompt_text(processor, QUESTIONS["tr"], "Merhaba.")], images=[make_image()], return_tensors="pt"
    )
    used_with_image = {name for name, grad in run(image_batch)[1].items() if grad is not None}
    single_loss, single_grads = run()
    assert all(grad is None for grad in single_grads.values())
    monkeypatch.setattr(modeling, "_distributed_world_size", lambda: 2)
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    dist_loss, dist_grads = run()
    assert calls == [1]
    assert torch.equal(dist_loss, single_loss)
    # exactly the parameters an image batch uses (the tower's layers after vision_feature_layer never get one)
    assert {name for name, grad in dist_grads.items() if grad is not None} == used_with_image
    assert len(used_with_image) > 10 and "model.moe.experts.gate_up_proj" in used_with_image
    for name in used_with_image:
        assert not dist_grads[name].any(), name
    with torch.no_grad():  # inference never runs it, distributed or not
        model(**batch)
    model.eval()
    model(**batch)
    assert calls == [1]


@pytest.mark.compat
def test_from_pretrained_dtype_and_safetensors(tmp_path, tiny):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = ParrotForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    batch = processor(text=[prompt_text(processor, QUESTIONS["ar"])], images=[make_image()], return_tensors="pt")
    with torch.no_grad():
        out = loaded(**batch, output_router_logits=True)
        reference = model(**batch, output_router_logits=True)
    assert out.logits.dtype == torch.bfloat16
    torch.testing.assert_close(out.router_logits.float(), reference.router_logits, rtol=0.05, atol=0.05)


def test_resize_token_embeddings_keeps_working(tiny):
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    old = model.config.text_config.vocab_size
    model.resize_token_embeddings(old + 5)
    assert model.get_input_embeddings().weight.shape[0] == old + 5
    assert model.lm_head.weight.shape[0] == old + 5
    assert model.config.text_config.vocab_size == old + 5
    batch = processor(text=[prompt_text(processor, QUESTIONS["en"])], images=[make_image()], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape[-1] == old + 5


@pytest.mark.compat
def test_init_weights_covers_every_parameter_of_ours(tmp_path):
    """Weights missing from a checkpoint (projector, router, experts) get a proper random init on load."""
    from safetensors.torch import load_file, save_file

    model, _ = tiny_model(seed=8)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    ours = [k for k in state if k.startswith(("model.moe.", "model.multi_modal_projector."))]
    assert len(ours) == 7
    save_file(
        {k: v for k, v in state.items() if k not in ours}, tmp_path / "model.safetensors", metadata={"format": "pt"}
    )
    loaded = ParrotForConditionalGeneration.from_pretrained(tmp_path)
    params = dict(loaded.named_parameters())
    std = loaded.config.initializer_range
    for name in ours:
        value = params[name].detach()
        assert torch.isfinite(value).all(), name
        if name.endswith("bias"):
            assert torch.count_nonzero(value) == 0, name
        else:
            assert 0.5 * std < value.std() < 2 * std, f"{name}: std {value.std():.4f}"
    # and the weights that were present are loaded, not re-initialised
    torch.testing.assert_close(params["lm_head.weight"], model.lm_head.weight)


def test_config_validation_errors():
    with pytest.raises(ValueError, match="image_seq_length=100 does not match"):
        ParrotConfig(image_seq_length=100)
    with pytest.raises(ValueError, match="moe_top_k"):
        ParrotConfig(moe_top_k=7)
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        ParrotConfig(vision_feature_select_strategy="cls_patch")
    assert ParrotConfig().image_seq_length == 577
    assert ParrotConfig(vision_feature_select_strategy="default").image_seq_length == 576


# ----------------------------------------------------------------------------------------------------------------
# Bad input: clear ValueErrors naming the problem (issue #2, behaviour 7)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.compat
def test_bad_model_inputs_raise_clear_errors(tiny):
    model, processor = tiny
    batch = processor(text=[prompt_text(processor, QUESTIONS["en"])], images=[make_image()], return_tensors="pt")
    two_images = torch.cat([batch["pixel_values"]] * 2)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"holds 10 image tokens but pixel_values holds 2 image"):
            model(input_ids=batch["input_ids"], pixel_values=two_images)
        with pytest.raises(
            ValueError, match=r"pixel_values must have shape \(num_images, 3, 30, 30\), got \(1, 3, 32, 32\)"
        ):
            model(input_ids=batch["input_ids"], pixel_values=torch.zeros(1, 3, 32, 32))
        text_only = processor(text=["no placeholder here"], return_tensors="pt")
        with pytest.raises(ValueError, match=r"holds 0 image tokens but pixel_values holds 1 image"):
            model(input_ids=text_only["input_ids"], pixel_values=batch["pixel_values"])
        with pytest.raises(ValueError, match=r"holds 10 image tokens but no pixel_values"):
            model(input_ids=batch["input_ids"])
        image_id = model.config.image_token_id
        split = torch.full((2, 20), 100)
        split[0, :15] = image_id  # 1.5 images in sample 0, 0.5 in sample 1: a truncated image
        split[1, :5] = image_id
        with pytest.raises(ValueError, match=r"Sample 0 holds 15 image tokens, not a multiple of image_seq_length=10"):
            model(input_ids=split, pixel_values=two_images)
        with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
            model(pixel_values=batch["pixel_values"])
