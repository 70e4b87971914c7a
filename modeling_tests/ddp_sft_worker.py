"""Worker of test_training.py::test_two_process_ddp: runs examples/train_sft.py under torchrun and dumps each rank's
weights to <output_dir>/rank{r}.pt, with the number of steps in which one rank's batch held images and the other's
did not."""

import os
import sys

import torch
import torch.distributed as dist
from test_training import run_example
from transformers import TrainerCallback


class RecordImages(TrainerCallback):
    """Whether each training forward on this rank got images."""

    def __init__(self):
        self.has_images: list[bool] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.register_forward_pre_hook(
            lambda module, args, kwargs: self.has_images.append(kwargs.get("pixel_values") is not None),
            with_kwargs=True,
        )


if __name__ == "__main__":
    record = RecordImages()
    trainer = run_example("train_sft", sys.argv[1:], callbacks=[record])
    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, record.has_images)
    mixed_steps = sum(len(set(flags)) > 1 for flags in zip(*per_rank))
    rank = trainer.accelerator.process_index
    torch.save(
        {
            "state": state,
            "world_size": trainer.accelerator.num_processes,
            "mixed_steps": mixed_steps,
            "global_step": trainer.state.global_step,
        },
        os.path.join(trainer.args.output_dir, f"rank{rank}.pt"),
    )
