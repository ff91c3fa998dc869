"""The training rows a run really consumed: counted where the trainer collates its micro-batches.

Steps x global batch overcounts a partial last batch (40 pairs at batch 32 are 40 pairs, not 64) and knows nothing
of epochs cut short by max_steps. Here the train dataloader's collate function records each micro-batch's size and
`training_step` takes them in order (a loader that fetches one batch ahead leaves that one uncounted), so the count is
what went through the model. Processes are summed. With dataloader workers the collate function runs in the workers:
then the count falls back to steps x batch, capped at the rows in the data per epoch run, and says it is estimated.
"""

from __future__ import annotations

from collections import deque


class ConsumedRows:
    def __init__(self):
        self.rows = 0           # this process's rows, as counted
        self.counted = True     # False: some micro-batch arrived without its collated size (workers)
        self.total: int | None = None  # summed over processes by `finish`
        self._pending: deque[int] = deque()

    @classmethod
    def attach(cls, trainer) -> ConsumedRows:
        existing = getattr(trainer, "consumed_rows", None)
        if isinstance(existing, cls):
            return existing
        counter = trainer.consumed_rows = cls()
        get_loader, train_step = trainer.get_train_dataloader, trainer.training_step

        def get_train_dataloader(*args, **kwargs):
            loader = get_loader(*args, **kwargs)
            inner = getattr(loader, "base_dataloader", loader)  # accelerate's DataLoaderShard iterates a base loader
            collate = inner.collate_fn

            def counting_collate(features):
                counter._pending.append(len(features))
                return collate(features)

            inner.collate_fn = counting_collate
            return loader

        def training_step(*args, **kwargs):
            if counter._pending:
                counter.rows += counter._pending.popleft()
            else:
                counter.counted = False
            return train_step(*args, **kwargs)

        trainer.get_train_dataloader, trainer.training_step = get_train_dataloader, training_step
        return counter

    def finish(self, trainer) -> int:
        """The rows every process consumed (call on every process: it sums across them)."""
        import torch

        mine = torch.tensor([self.rows, int(not self.counted)], dtype=torch.long, device=trainer.accelerator.device)
        summed = trainer.accelerator.reduce(mine, reduction="sum") if trainer.accelerator.num_processes > 1 else mine
        self.total, self.counted = int(summed[0]), int(summed[1]) == 0
        return self.total
