from django.core.management.base import BaseCommand, CommandError

from generator.models import GenerationSession, WorkerRecord


class Command(BaseCommand):
    help = (
        "List the workers (alive or not, what they serve, their current job); exit non-zero "
        "when none is alive, for a cron job or a container health check."
    )

    def handle(self, *args, **options):
        alive = set(WorkerRecord.objects.alive().values_list("pk", flat=True))
        running = {s.worker_id: s for s in GenerationSession.objects.running()}
        for worker in WorkerRecord.objects.order_by("pk"):
            state = ("alive" if worker.pk in alive else "lost") + (
                "" if worker.ready else ", starting"
            )
            serves = ", ".join(worker.served_models.splitlines()) or "any model"
            job = running.get(worker.pk)
            current = f"{job.pk} ({job.percentage} %)" if job else "idle"
            self.stdout.write(
                f"{worker.pk}  {state}  serves {serves}; {worker.served_backends or 'any backend'}"
                f"  job: {current}"
            )
        if not alive:
            raise CommandError("No worker is alive.")
        self.stdout.write(f"{len(alive)} alive.")
