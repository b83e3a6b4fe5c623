from pathlib import Path

from django.core.management.base import BaseCommand

from generator.training import demo as demo_train


class Command(BaseCommand):
    help = (
        "Train the demo model from scratch on the scenes it draws itself (about 1 h 45 min on "
        "two CPU cores; seeded, so the same machine gives the same weights)."
    )

    def add_arguments(self, parser):
        plan = demo_train.Plan()
        parser.add_argument("--out", type=Path, default=plan.out, help="Where to save it.")
        parser.add_argument("--vae-steps", type=int, default=plan.vae_steps)
        parser.add_argument("--unet-steps", type=int, default=plan.unet_steps)
        parser.add_argument("--dataset", type=int, default=plan.dataset)
        parser.add_argument("--half-dataset", type=int, default=plan.half_dataset)
        parser.add_argument("--half-share", type=float, default=plan.half_share)
        parser.add_argument("--unet-batch", type=int, default=plan.unet_batch)
        parser.add_argument("--lr", type=float, default=plan.lr)
        parser.add_argument("--refine-steps", type=int, default=plan.refine_steps)
        parser.add_argument("--refine-rounds", type=int, default=plan.refine_rounds)
        parser.add_argument("--decoder-steps", type=int, default=plan.decoder_steps)
        parser.add_argument(
            "--refine-only",
            action="store_true",
            help="Every pass after the first (the further UNet passes, then the decoder's), "
            "on the first pass's weights already at --out.",
        )
        parser.add_argument(
            "--refine-round",
            type=int,
            help="Only this one further pass (1, 2, ...), on the weights already at --out.",
        )
        parser.add_argument(
            "--decoder-only",
            action="store_true",
            help="Only the last pass (the VAE decoder on whole scenes), on the weights at --out.",
        )
        parser.add_argument(
            "--checkpoint", type=int, default=0, help="Also save every N UNet steps (0: never)."
        )
        parser.add_argument(
            "--lora",
            action="store_true",
            help="Train only the demo LoRA (demo-swap) on the shipped model (about 2 minutes).",
        )
        parser.add_argument(
            "--controlnet",
            action="store_true",
            help="Train only the demo canny ControlNet (demo-canny) for the shipped model "
            "(about 10 minutes).",
        )
        parser.add_argument("--controlnet-steps", type=int, default=450, help="Its training steps.")

    def handle(
        self, *args, out, vae_steps, unet_steps, dataset, half_dataset, half_share, unet_batch, lr,
        refine_steps, refine_rounds, decoder_steps, refine_only, refine_round, decoder_only,
        checkpoint, lora, controlnet, controlnet_steps, **options,
    ):  # fmt: skip
        import torch

        torch.set_num_threads(2)
        plan = demo_train.Plan(
            vae_steps=vae_steps,
            unet_steps=unet_steps,
            dataset=dataset,
            half_dataset=half_dataset,
            half_share=half_share,
            unet_batch=unet_batch,
            lr=lr,
            refine_steps=refine_steps,
            refine_rounds=refine_rounds,
            decoder_steps=decoder_steps,
            out=out,
        )

        def report(stage, step, total, **losses):
            figures = " ".join(f"{name}={value:.4f}" for name, value in losses.items())
            self.stdout.write(f"{stage} {step + 1}/{total} {figures}")
            self.stdout.flush()

        if lora:
            from generator.training.demo_lora import train_lora

            path = train_lora(report=report)
            self.stdout.write(self.style.SUCCESS(f"Saved the demo LoRA in {path}"))
            return
        if controlnet:
            from generator.training.demo_controlnet import train_controlnet

            # One thread: on a shared, busy machine two OpenMP threads spend most of their
            # time waiting for each other (76 s for a step that takes 0.5 s on one).
            torch.set_num_threads(1)
            path = train_controlnet(steps=controlnet_steps, report=report)
            self.stdout.write(self.style.SUCCESS(f"Saved the demo ControlNet in {path}"))
            return
        if decoder_only:
            demo_train.refine_decoder(plan, report)
        elif refine_round:
            demo_train.refine(plan, report, checkpoint, refine_round)
        elif refine_only:
            demo_train.further_passes(plan, report, checkpoint)
        else:
            demo_train.train(plan, report, checkpoint)
        self.stdout.write(self.style.SUCCESS(f"Saved the demo model in {out}"))
