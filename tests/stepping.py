"""Step-by-step forms that only tests and bench/check_dtypes.py use: the module-step reference
decoder, and the distributions generation draws from on real pieces (teacher forcing).

They live here, not in models/, because generation never calls them: they check it.
"""
import torch

from models.generation import GenerationHeads, RecurrentDecoder
from models.prior import RecurrentPrior
from models.sampling import SamplingParams
from music.elements import CONDITIONED, N_FIELDS, TYPE_FIELD


class ModuleStepDecoder(RecurrentDecoder):
    """RecurrentDecoder's plain reference form: the same steps through each module's own step
    (embeddings and input projection, positional encoding, the global decoder stack, each
    element decoder), with no packing or tracing. `step` only (the batch never shrinks)."""

    def __init__(self, model, latent):          # no packed stacks: RecurrentDecoder's are not used
        self.model = m = model
        self.latent = latent
        self.z = m._slice_inputs(latent)                              # [B, T, 7, d]
        args = (latent.shape[0], latent.device, latent.dtype)
        self.global_state = self.memory = self.element_states = None
        if m.global_decoder is not None:
            self.global_state = m.global_decoder.init_state(*args)
            if m.config.conditioning == "CA":
                self.memory = m.global_decoder.summarize_memory(m.memory_projection(latent))
        if m.element_decoders is not None:
            self.element_states = [decoder.init_state(*args) for decoder in m.element_decoders]
        self.global_output = None

    def _embed(self, word):
        return self.model.decoder_input(self.model.embeddings(word, range(N_FIELDS)))

    def _position(self, h, t: int):
        return self.model.decoder_position.step(h, t)

    def _global_step(self, h):
        h, self.global_state = self.model.global_decoder.step(h, self.global_state, self.memory)
        return h

    def _element_step(self, inputs):
        states = []
        for k, decoder in enumerate(self.model.element_decoders):
            e, self.element_states[k] = decoder.step(inputs[:, k], self.element_states[k])
            states.append(e)
        return torch.stack(states, dim=-2)

    def select(self, index):
        raise NotImplementedError("the reference decoder steps a fixed batch")


@torch.inference_mode()
def teacher_forced_distributions(model, x, y, codes, sampling: SamplingParams | None = None):
    """What generation would draw from at each step of real pieces: x [B, L, 8] fed word
    by word through RecurrentDecoder (as generation steps it), latents from codes [B, T],
    the conditioned fields given the true next type y[..., type]. Returns {field: [B, L, V]}
    float64 softmax(logits / the field's temperature), for comparing dtypes."""
    sampling = sampling or SamplingParams()
    decoder = RecurrentDecoder(model, model.latent_from_codes(codes))
    heads = GenerationHeads(model, sampling)
    out = {k: [] for k in [TYPE_FIELD, *CONDITIONED]}
    for t in range(x.shape[1]):
        states, z = decoder.step(x[:, t], t)
        logits = {TYPE_FIELD: model.type_logits(states, z)}
        conditioned = heads.logits(states, z, y[:, t, TYPE_FIELD])
        for i, k in enumerate(CONDITIONED):
            logits[k] = conditioned[i, :, : heads.vocab[i]]
        for k, value in logits.items():
            out[k].append(torch.softmax(value.double() / sampling.for_element(k).temperature, -1))
    return {k: torch.stack(v, 1) for k, v in out.items()}


@torch.inference_mode()
def prior_teacher_forced_distributions(prior, inp, temperature: float = 0.3):
    """What generation would draw from at each step of real code sequences inp [B, L]
    (emotion token first), through RecurrentPrior: float64 softmax(logits / temperature)
    [B, L, n_codes], for comparing dtypes."""
    stepper = RecurrentPrior(prior, inp.shape[0])
    return torch.stack([torch.softmax(stepper.step(inp[:, t], t).double() / temperature, -1)
                        for t in range(inp.shape[1])], 1)
