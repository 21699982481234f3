"""The `%%icl` method: options in, one IclRun, a Result out."""
from __future__ import annotations

from ...backends import LocalBackend, OpenAIBackend
from ...engine.device import pick_dtype
from ...errors import UsageError
from ...method import Method
from ...models import hold, load_model, resolve
from .inputs import load_inputs
from .options import IclOptions
from .prompts import split_templates
from .result import IclResult
from .run import IclRun


class IclMethod(Method):
    name = "icl"
    summary = ("In-context learning: a prompt template with k demonstrations, scored by label log-likelihood "
               "(--labels, calibrated) or generated; several templates separated by '---' are compared on the "
               "same rows; --index fills {context} with retrieved chunks; --chat uses the model's chat template.")
    Options = IclOptions
    cell_option = "template"
    seed_controls = ("demonstrations", "sampling")

    def run(self, o: IclOptions, ctx) -> IclResult:
        templates = split_templates(o.template)
        backend = make_backend(o, ctx)
        inputs = load_inputs(o, templates, ctx)
        result = IclRun(o, ctx, templates, backend, inputs, self.name).execute()
        hold(result)
        return result


def make_backend(o: IclOptions, ctx):
    if o.api_base:
        backend = OpenAIBackend(o.api_base, o.model or "default", o.api_key_env, o.api_timeout, o.api_style)
        backend.check()
        return backend
    source = resolve(o.model)
    check_decoder(source, o.trust_remote_code)
    device = ctx.device(o.device)
    loaded = load_model(source, "causal_lm", device, pick_dtype(device, o.dtype),
                        trust_remote_code=o.trust_remote_code)
    return LocalBackend(loaded, o.batch_tokens)


def check_decoder(source, trust_remote_code: bool) -> None:
    """ICL needs a causal LM: refuse an encoder before loading it with a random LM head."""
    from transformers import AutoConfig

    from ...models import architecture_kind
    try:
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return  # load_model says what is wrong
    if architecture_kind(config) != "decoder":
        raise UsageError(f"--model {source.name}: %%icl needs a causal (decoder) language model such as smollm2; "
                         f"{source.name} is an {architecture_kind(config)}")
