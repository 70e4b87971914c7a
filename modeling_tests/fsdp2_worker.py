"""Worker of test_training.py::test_fsdp2_*: FSDP2 (`fully_shard`, CPU, gloo) over the model's `_no_split_modules`,
with rank 0 training on an image sample and rank 1 on a text-only one; saves the gathered weights, the losses and
the wrapped classes to <out>/fsdp2.pt (rank 0)."""

import os
import sys

import torch
from PIL import Image

from transformers_parrot import ParrotForConditionalGeneration, ParrotProcessor

STEPS, LR = 2, 0.1


def rank_batches(processor: ParrotProcessor) -> list[dict]:
    """Rank 0: an image question; rank 1: a text-only question (the modality differs across ranks)."""
    visual = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
    ]
    text = [
        {"role": "user", "content": [{"type": "text", "text": "Merhaba de."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Merhaba."}]},
    ]
    image = Image.new("RGB", (20, 30), (200, 10, 10))
    return [
        processor(text=[processor.apply_chat_template(visual, tokenize=False)], images=[image], return_tensors="pt"),
        processor(text=[processor.apply_chat_template(text, tokenize=False)], return_tensors="pt"),
    ]


def main(path: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = ParrotForConditionalGeneration.from_pretrained(path, use_moe=True)  # stage-2 model: MoE on
    batch = rank_batches(ParrotProcessor.from_pretrained(path))[rank]
    wrap = set(model._no_split_modules)
    for module in list(model.modules()):  # what accelerate's TRANSFORMER_BASED_WRAP does with _no_split_modules
        if type(module).__name__ in wrap:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for _ in range(STEPS):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach().item())
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    wrapped = sorted(type(m).__name__.removeprefix("FSDP") for m in model.modules() if isinstance(m, FSDPModule))
    all_losses = [None] * dist.get_world_size()
    dist.all_gather_object(all_losses, losses)
    if rank == 0:
        torch.save({"state": state, "wrapped": wrapped, "losses": all_losses}, f"{out}/fsdp2.pt")
    dist.barrier()  # every rank is done and rank 0's file is written
    # Leave without tearing gloo/FSDP down: about one run in ten aborted at teardown on CPU ("terminate called
    # without an active exception", after all results were written); nothing of ours runs after this point.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
