"""Training: chapter 7's finetuning as one call (`finetune`, its `recipe`), the exact and fast loops (`loops`),
the instruction data (`data`), LoRA (`lora`) and the evaluation with a judge model (`evaluate`)."""
