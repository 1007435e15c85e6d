"""The check kit for component authors (and vaeflow's own test suite).

One entry point per component kind builds the component from its registered factory on small
shapes and runs every check below that applies; use them from pytest:

    from vaeflow_cli.testing import check_flow_component, check_encoder, check_decoder, check_prior, check_dataset

    def test_my_flow():
        check_flow_component(MyFlow, image_shape=(3, 4, 4), pixel_flow=True)   # a factory, as registered

    def test_my_encoder():
        check_encoder(MyEncoder, image_shape=(1, 8, 8), latent_dim=3, width=16)  # extra kwargs: config keys

Each failure is an ``AssertionError`` whose message says what broke, by how much, and what the
rule is. The checks (each also public, for use on a module built by hand):

* **contract**: shapes, dtypes (float32) and finiteness of what the component returns, against the
  protocols of ``vaeflow_cli.hookspecs`` (``check_flow_outputs`` and the entry points);
* **bijection** (flows, bijective priors; ``check_bijection``): ``inverse(forward(x)) = x`` to
  1e-5; the forward log-det AND the inverse log-det each equal ``log|det J|`` of the Jacobian that
  ``torch.autograd.functional.jacobian`` computes (in float64, independently of the component's
  formula), and the two are opposite;
* **change of variables** (bijective priors; ``check_log_prob_change_of_variables``):
  ``log_prob(z) = log N(h(z); 0, I) + log|det dh/dz|`` with the Jacobian from autograd;
* **sampling** (priors; ``check_prior``): ``from_base(u)`` changes with the base points u, and
  ``log_prob`` is finite at the samples it gives (for a bijective prior, ``from_base = h^-1``);
* **gradients** (``check_gradients``): every trainable parameter gets a finite gradient from a
  scalar loss of the component's outputs (a flow: its forward outputs and its log-det; an encoder
  or decoder: both outputs; a prior: ``log_prob``), non-zero wherever a finite difference shows
  that the loss depends on the parameter;
* **state_dict round trip** (``check_state_dict_round_trip``): the state dict, written with
  ``torch.save`` and read back with ``torch.load(weights_only=True)`` (as vaeflow reads
  checkpoints), loaded strictly into a fresh instance built by the same factory under another
  seed, gives bit-identical outputs in eval() and train() mode;
* **eval() and train() agree** (``check_modes_agree``): see the mode rule below;
* **identity at initialisation** (pixel flows; ``check_identity_at_init``): see the ``Flow``
  protocol; a freshly built flow gives ``f(x) = x`` and ``log_det = 0``, also in its first forward
  pass in train() mode (where data-dependent initialisation happens) and in eval() after it, with
  the same check and tolerances that training applies to real images when a phase starts
  (``vaeflow_cli.model.contracts``: relative 1e-5, 1e-4 nats);
* **conditional flows** (``check_conditional_flow``, which ``check_flow_component`` calls for a
  flow declaring ``conditional = True``): every flow check above with the condition (a decoder's
  (mean, std)) held fixed, at two conditions drawn at random, and that the output depends on it;
* **datasets** (``check_dataset``, ``check_dataset_missing_files``): ``image_shape``, ``splits``,
  every split a uint8 array (N, C, H, W); missing files are one ``VaeflowError`` line.

Rules the kit applies:

* **Perturbation.** Before the mathematical and gradient checks, every parameter is moved away
  from its initial value (``perturb``): a flow that starts as the identity is then checked as a
  general bijection, and a zero-initialised last layer (which at initialisation blocks the gradient
  of the layers before it) does not hide a parameter that never gets one.
* **Data-dependent initialisation.** Every entry point runs the component once in train() mode on
  a warm-up batch, without gradients, before it compares anything; checks then use other inputs.
* **Mode rule.** vaeflow evaluates in eval() mode and trains in train() mode and expects the same
  function in both, once data-dependent initialisation has happened. Exempt by design are
  components holding layers whose behaviour depends on the mode: BatchNorm (batch statistics in
  train(), running statistics in eval()), InstanceNorm with running statistics, Dropout
  (``MODE_DEPENDENT_LAYERS``; detected automatically). Pass ``modes_differ=True`` to declare any
  other exemption (say why in your test), or ``modes_differ=False`` to check a component anyway.
* **Randomness.** Every compared call runs under the same torch seed, so a component that draws
  noise (e.g. a stochastic ``log_prob``) is compared with itself.
* **Sizes.** A factory whose defaults are too big for the kit's small images may carry a dict
  ``test_kwargs`` of settings that fit them (``MultiScaleGlow.test_kwargs``); explicit keyword
  arguments to an entry point override it.

The checks run on the CPU in float32 (Jacobians in float64) and set no global state: the global
torch RNG is forked around every seeded call.
"""

from vaeflow_cli.testing._helpers import MODE_DEPENDENT_LAYERS, mode_dependent_layers, perturb
from vaeflow_cli.testing.components import check_conditional_flow, check_decoder, check_encoder, check_flow_component, check_prior
from vaeflow_cli.testing.datasets import check_dataset, check_dataset_missing_files
from vaeflow_cli.testing.mathematics import check_bijection, check_flow_outputs, check_log_prob_change_of_variables
from vaeflow_cli.testing.modules import check_gradients, check_identity_at_init, check_modes_agree, check_state_dict_round_trip

__all__ = [
    "MODE_DEPENDENT_LAYERS",
    "perturb",
    "mode_dependent_layers",
    "check_bijection",
    "check_log_prob_change_of_variables",
    "check_flow_outputs",
    "check_gradients",
    "check_state_dict_round_trip",
    "check_modes_agree",
    "check_identity_at_init",
    "check_flow_component",
    "check_conditional_flow",
    "check_encoder",
    "check_decoder",
    "check_prior",
    "check_dataset",
    "check_dataset_missing_files",
]
