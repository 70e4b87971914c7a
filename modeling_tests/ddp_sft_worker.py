"""Worker of test_training.py::test_two_process_ddp: runs the SFT recipe under torchrun/accelerate and dumps each
rank's weights to <output_dir>/rank{r}.pt."""

import os
import sys

import torch

from transformers_parrot.training.scripts import sft_main

if __name__ == "__main__":
    trainer = sft_main(sys.argv[1:])
    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    rank = trainer.accelerator.process_index
    torch.save({"state": state, "world_size": trainer.accelerator.num_processes,
                "global_step": trainer.state.global_step},
               os.path.join(trainer.args.output_dir, f"rank{rank}.pt"))
