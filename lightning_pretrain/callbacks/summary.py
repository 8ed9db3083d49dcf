"""The model summary without Lightning's FLOPs column, which reads 0 unless the module sets `example_input_array`
(a forward at start-up we do not want); instead one line of training FLOPs per token from the same count the
throughput logger uses (`throughput.batch_flops`: PaLM's 6N + attention), at the data's sequence length."""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count

from lightning_pretrain import compat
from lightning_pretrain.callbacks.throughput import batch_flops

log = logging.getLogger("lightning.pytorch.callbacks.model_summary")


def training_flops_per_token(pl_module) -> int | None:
    """Model FLOPs of one training token at the data's length (None where the model or length is unknown)."""
    model = getattr(pl_module, "model", None)
    data = getattr(pl_module, "data", None)
    length = getattr(data, "longest", None)
    if not hasattr(getattr(model, "config", None), "num_attention_heads") or not length:
        return None
    try:
        return batch_flops(model, (1, length)) // length
    except (AttributeError, TypeError, ValueError):  # an architecture whose config lacks what the count reads
        return None


class Summary(ModelSummary):
    """Lightning's ModelSummary (a rich table when rich is installed), less the FLOPs column, plus our FLOP count."""

    def on_fit_start(self, trainer, pl_module) -> None:
        compat.summary_kwargs(self)["flops_per_token"] = training_flops_per_token(pl_module)
        super().on_fit_start(trainer, pl_module)

    @staticmethod
    def summarize(
        summary_data,
        total_parameters,
        trainable_parameters,
        model_size,
        total_training_modes,
        total_flops,
        flops_per_token=None,
        **summarize_kwargs,
    ) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        totals = [
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train / eval mode", f"{total_training_modes['train']} / {total_training_modes['eval']}"),
        ]
        if flops_per_token:
            totals.append(("Training FLOPs per token (6N + attention)", get_human_readable_count(flops_per_token)))
        try:
            from rich import get_console
            from rich.table import Table
        except ImportError:
            width = [max(len(name), *(len(v) for v in values)) for name, values in columns]
            rows = [" | ".join(name.ljust(w) for (name, _), w in zip(columns, width))]
            rows += [" | ".join(v.ljust(w) for v, w in zip(row, width)) for row in zip(*(v for _, v in columns))]
            log.info("\n".join(["", *rows, *(f"{k}: {v}" for k, v in totals)]))
            return
        table = Table(header_style="bold magenta")
        for name, _ in columns:
            table.add_column(name if name else " ", justify="right" if name == "Params" else "left")
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        grid = Table.grid(expand=True)
        grid.add_column()
        for key, value in totals:
            grid.add_row(f"[bold]{key}[/]: {value}")
        console.print(grid)
