"""The fine-tuning job kind: LoRA training with PEFT as one long job item (`kind`), the
trainer itself (`train`) and the training file's checks (`data`)."""

from cumulo.jobs.finetune.kind import KIND, FineTuneKind, job_dir

__all__ = ["KIND", "FineTuneKind", "job_dir"]
