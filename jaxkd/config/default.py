"""The seed's recipe (pytorch-kd, whose hyperparameters are CRD's), the base of every config: 240 epochs, batch
64, SGD lr 0.05 momentum 0.9, weight decay 5e-4, lr x0.1 after the first step of epochs 150, 180 and 210 (the
seed's decay_lr); plain cross-entropy (method "none"). `repdistiller_recipe` turns it into RepDistiller's
(train_student.py), the recipe behind the numbers quoted for KD, FitNets, AT and CRD.

    python -m jaxkd.train --config configs/default.py --workdir workdirs/wrn40_2 --config.model=wideresnet40_2
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.model = "wideresnet40_2"  # the student (the trained model); any name of jaxkd.models
    config.method = "none"  # a name of jaxkd.methods.METHODS

    config.data = ConfigDict()
    config.data.source = "tfds"  # tfds | cifar100-python | digits | imagefolder | tfds_images (docs/data.md)
    config.data.data_dir = ""  # "" = the source's default location
    config.data.download = True  # fetch (and for tfds prepare) the data when it is missing
    # The training pipeline (jaxkd/data/pipeline.py), the seed's: reflect padding, its mean/std, full batches only
    # (781 steps per epoch at 50,000 / 64). RepDistiller's: "zeros", "repdistiller", False (782, the last of 16).
    config.data.padding = "reflect"  # reflect | zeros
    config.data.normalization = "pytorch_kd"  # pytorch_kd | repdistiller | imagenet (also used to evaluate)
    config.data.drop_last = True
    # SaliencyMix (Uddin et al. 2021) on every batch with probability saliencymix_prob; the teacher sees the same
    # mixed images. Per-example boxes (each centred on its own source's saliency peak) are an extension.
    config.data.saliencymix = False
    config.data.saliencymix_prob = 0.5
    config.data.saliencymix_per_example = False
    # The streaming path (data.source "imagefolder": data_dir/{train,val}/<class>/<image>; "tfds_images": the TFDS
    # dataset `tfds_name`; docs/data.md "Your own images"): torchvision's ImageNet transforms at these sizes,
    # decoded in `workers` processes: -1 one per CPU core this process may use, 0 threads of this process, N
    # processes (a validation split of at most 2,000 images in threads: jaxkd/data/streaming/workers.py).
    config.data.tfds_name = ""  # e.g. imagenet2012
    config.data.image_size = 224  # RandomResizedCrop's output in training
    config.data.eval_resize = 256  # Resize (the shorter side) then
    config.data.eval_crop = 224  # CenterCrop in evaluation
    config.data.workers = -1
    config.data.train_split = "train"  # the split names (TFDS: e.g. "test" where a dataset has no "validation")
    config.data.eval_split = ""  # "" = "val" for an image folder, "validation" for TFDS
    config.data.skip_unreadable = False  # leave out (and list) files the open-time check cannot read; else an error
    # digits only: the side of its images, scikit-learn's 8x8 repeated (nearest neighbour) to 16 or 32 pixels (32:
    # CIFAR's size, the default); 16 takes a quarter of the compute (the test suite's small runs)
    config.data.digits_size = 32

    config.batch_size = 64  # global batch, split over the devices; data.drop_last: the last partial batch
    # The models' compute dtype: "bfloat16" for accelerators (parameters, BN statistics and losses stay float32;
    # on CPU it is slower, benchmarks/README.md).
    config.dtype = "float32"
    config.eval_batch_size = 500
    config.epochs = 240

    config.optimizer = ConfigDict()
    config.optimizer.lr = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 5e-4
    config.optimizer.lr_decay_epochs = (150, 180, 210)
    config.optimizer.lr_decay_rate = 0.1
    # When each decay starts (jaxkd/engine/optimizer.py): "pytorch_kd" = after the first step of the named 1-based
    # epoch (pytorch-kd's decay_lr), "repdistiller" = from the first step of the next epoch (adjust_learning_rate).
    config.optimizer.lr_decay_timing = "pytorch_kd"
    # "linear": lr * batch_size / lr_reference_batch, for large global batches on many devices (docs/scale_out.md).
    config.optimizer.lr_scaling = "none"
    config.optimizer.lr_reference_batch = 64
    # DOT (Zhao et al. 2023, mdistiller's `dot` trainer; jaxkd/engine/dot.py): the task (CE) gradient's
    # momentum buffer at momentum - dot_delta, the distillation gradient's at momentum + dot_delta.
    config.optimizer.dot = False
    config.optimizer.dot_delta = 0.075  # mdistiller's CFG.SOLVER.DOT.DELTA

    # total = gamma * CE + alpha * KD(T) + beta * method term (RepDistiller's -r/-a/-b).
    config.loss = ConfigDict()
    config.loss.gamma = 1.0
    config.loss.alpha = 0.0
    config.loss.beta = 0.0
    config.loss.kd_temperature = 4.0
    # Logit standardization (Sun et al. 2024) on the KD term: both logits z-scored per example before T
    # (jaxkd.engine.losses.standardize_logits); configs/mdistiller.py's kd_ls recipe.
    config.loss.logit_standardization = False

    config.teacher = ConfigDict()
    config.teacher.checkpoint = ""  # a .pth (seed or RepDistiller layout), a model checkpoint, or a workdir
    config.teacher.arch = ""  # "" = from the checkpoint (metadata or tensor shapes)

    config.log_every_steps = 100
    # Train steps per host call (one lax.scan over them): fewer Python round trips, for when dispatching a step
    # costs the host about as long as the device takes to run it (fast accelerators, small models). The same
    # computation for every value, equal up to float rounding (XLA compiles a loop body differently); exact
    # resume holds for a given value. Best a divisor of log_every_steps: the loop regains control at every
    # metrics fetch and epoch end, and single steps fill what a whole chunk does not. 0 = automatic: 1 on CPU,
    # 20 on GPU/TPU (the largest divisor of log_every_steps up to 20; see jaxkd.engine.dispatch.steps_per_dispatch).
    config.steps_per_dispatch = 0
    config.eval_every_epochs = 1
    config.checkpoint_every_epochs = 10
    config.keep_checkpoints = 2
    config.progress_bar = True
    # Weights & Biases (jaxkd.io.wandb_log): the metrics.jsonl rows through the wandb client. mode: disabled (off),
    # offline (a local run directory, `wandb sync` later) or online; entity "": your wandb default.
    config.wandb = ConfigDict({"project": "jaxkd", "entity": "", "mode": "disabled"})
    return config


def repdistiller_recipe(config: ConfigDict) -> ConfigDict:
    """RepDistiller's recipe on the same hyperparameters: the lr decays from the first step of epochs 151, 181
    and 211 (adjust_learning_rate at the start of each epoch); its data pipeline (dataset/cifar100.py): zero
    padding, its mean/std (also to evaluate), and the last partial batch kept (782 steps per epoch at 50,000 / 64,
    the last of 16). Returns `config`, changed in place."""
    config.optimizer.lr_decay_timing = "repdistiller"
    config.data.padding = "zeros"
    config.data.normalization = "repdistiller"
    config.data.drop_last = False
    return config
