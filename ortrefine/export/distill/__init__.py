"""Distil a smaller student from a bundle's teacher checkpoint, then export it as a bundle.

Teacher: the torch checkpoint the bundle was exported from (its manifest's `source`).
Student: the teacher's config with fewer layers; embeddings, final norm, lm_head and the chosen
layers' weights are copied from the teacher (DistilBERT / DistilGPT2 initialisation).
Loss per token (DistilGPT2 recipe, Hinton et al.):

    loss = alpha_kd · T² · KL(softmax(z_teacher / T) ‖ softmax(z_student / T)) + alpha_ce · CE(text)

averaged over the real (non-padding) tokens of a batch. Data: a text file / JSONL, or sequences
sampled from the teacher itself (sequence-level distillation: no corpus needed).

Reproducible and resumable: the data order, dropout and sampling of step s depend only on
(seed, s); checkpoints (student, optimizer, step, RNG states, data position, loss curve) go
to `<out>.ckpt/state.safetensors` every `checkpoint_every` steps, and `resume=True` continues
from it with the same loss curve an uninterrupted run gives.

Nothing in the work folder is ever unpickled: a checkpoint or data cache is something a user
copies between machines, and loading a pickle runs whatever code it names. Tensors are
safetensors, everything else JSON; a `*.pt` pickle an older version wrote is refused unread.
And nothing the tool did not write is deleted: `--overwrite` removes `<out>.ckpt` only when it
carries distill's stamp and nothing else, and replaces `<out>` only when it is a bundle.

Modules, each importing only those above it:
    config       DistillConfig, DistillResult
    models       the teacher (from the bundle's manifest) and the student cut from it
    texts        text / JSONL files and token windows
    schedule     seeds, data order and learning rate as functions of (seed, step)
    sampling     sequences sampled from the teacher
    losses       KD + CE loss and the held-out figures
    workdir      the `<out>.ckpt` folder: stamp, settings fingerprint, what may be touched
    output       the output folder: where it is, when it may be replaced
    cache        the sampled-sequence cache (safetensors)
    checkpoint   training state save / restore (safetensors)
    planning     every check made before the teacher loads
    corpus       a run's training and held-out sequences
    training     the loop
    commit       the student's checkpoint and bundle, swapped in atomically
    api          distill()
"""

from .api import distill
from .cache import DATA_FORMAT
from .checkpoint import STATE_FORMAT
from .config import DEFAULT_SELF_GENERATED, DistillConfig, DistillResult
from .losses import collate, distill_losses, heldout_metrics
from .models import SOURCE_KINDS, build_student, count_params, default_layers, load_teacher, teacher_layer_count, teacher_source
from .output import output_path
from .planning import plan
from .sampling import sample_from_teacher, seed_prompts
from .schedule import batch_indices, lr_at
from .texts import read_texts, windows
from .workdir import (
    DATA_FILE,
    LEGACY_FILES,
    STAMP_FILE,
    STATE_FILE,
    STUDENT_DIR,
    WORK_ENTRIES,
    WRITTEN_BY,
    fingerprint,
)

__all__ = [
    "DATA_FILE", "DATA_FORMAT", "DEFAULT_SELF_GENERATED", "LEGACY_FILES", "SOURCE_KINDS", "STAMP_FILE", "STATE_FILE",
    "STATE_FORMAT", "STUDENT_DIR", "WORK_ENTRIES", "WRITTEN_BY",
    "DistillConfig", "DistillResult", "batch_indices", "build_student", "collate", "count_params", "default_layers",
    "distill", "distill_losses", "fingerprint", "heldout_metrics", "load_teacher", "lr_at", "output_path", "plan",
    "read_texts", "sample_from_teacher", "seed_prompts", "teacher_layer_count", "teacher_source", "windows",
]
