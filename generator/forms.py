from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from .models import Backend
from .pipelines.schedulers import DEFAULT_SCHEDULER, SCHEDULER_CHOICES

MAX_SEED = 2**32 - 1


def multiple_of_8(value: int) -> None:
    if value % 8:
        raise ValidationError("Must be a multiple of 8.", code="multiple_of_8")


class GenerateForm(forms.Form):
    """The parameters of POST /api/generate; blank optional fields take the defaults."""

    prompt = forms.CharField(
        min_length=1,
        max_length=1000,
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "a lighthouse at dawn, oil painting"}
        ),
    )
    negative_prompt = forms.CharField(
        max_length=1000, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    steps = forms.IntegerField(min_value=1, max_value=150, required=False)
    guidance_scale = forms.FloatField(min_value=0, max_value=30, required=False)
    width = forms.IntegerField(
        min_value=64, max_value=2048, required=False, validators=[multiple_of_8]
    )
    height = forms.IntegerField(
        min_value=64, max_value=2048, required=False, validators=[multiple_of_8]
    )
    seed = forms.IntegerField(min_value=0, max_value=MAX_SEED, required=False)
    scheduler = forms.ChoiceField(choices=SCHEDULER_CHOICES, required=False)
    model = forms.ChoiceField(required=False)
    backend = forms.ChoiceField(choices=Backend.choices, required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["backend"].initial = settings.SD_BACKEND
        self.fields["scheduler"].initial = DEFAULT_SCHEDULER
        self.fields["model"].choices = [(m, m) for m in settings.SD_MODELS]
        self.fields["model"].initial = settings.SD_MODEL

    def parameters(self) -> dict:
        """The cleaned values, without the ones left blank (so defaults apply)."""
        return {k: v for k, v in self.cleaned_data.items() if v not in (None, "")} | {
            "negative_prompt": self.cleaned_data.get("negative_prompt", "")
        }
