"""ResNet-18 on CIFAR-10, 30 epochs, batch 512, SGD-Nesterov, bf16 compute: unmeasured, kept for studies that
want the standard network. The GPU recipe is configs/cifar10.py (an airbench-class CNN at a twelfth of this run's FLOPs).

Expected, not measured: about 94-95 % test accuracy on the official CIFAR-10 with the softmax objective at τ = 1
(the usual ResNet-18 figure for 30+ epochs with crop+flip; e.g. kuangliu/pytorch-cifar reports 93-95 % for 200
epochs, David Page's ResNet-9 94 % in 24 epochs), a little lower on the JPEG copy in ../shared. Cost: XLA's cost
analysis of this train step gives 2.91 GFLOP per training image (forward and backward), 4.4 PFLOP for the
run's 30 epochs of 50,000 images; at 30-40 % of an A100's 312 TFLOP/s bf16 peak that is about 35-47 s of
compute, and a few minutes with evaluation, compilation and input. Both the accuracy and the time are
estimates: this repository has not run this config.

Carried over from the CPU recipe: test-time augmentation over flips and ±2-pixel translations (6 views; on
the CPU recipe's CNN at 6 epochs, +1.6 to +1.8 points of validation accuracy over none, n = 3; not measured on
ResNet-18). An evaluation is then 6 forward passes of 10,000 test images, about 0.06 PFLOP (1.3 % of the
training compute); evaluating every 5 epochs, 6 times in all, adds about 8 %. Not carried over: the whitened
stem (the CNN's: ResNet-18's 64-channel stem is wider than a 2×2 patch has components), batch 64 (a CPU
throughput finding: a GPU wants large batches), and 6 epochs with 2-pixel crops (choices for a budget that
underfits).

    smoothmax train --config configs/cifar10_resnet18.py:softmax --workdir runs/resnet18-softmax

The data is the official archive (downloaded once, md5-checked, cached) unless ``$SMOOTHMAX_CIFAR10`` or
``--config.data.path`` names a local copy.
"""

from smoothmax.config import base_config, objective_variant


def get_config(arg: str = "softmax"):
    c = base_config()
    c.epochs = 30
    c.data.name = "cifar10"
    c.data.path = ""  # $SMOOTHMAX_CIFAR10, else the official archive
    c.data.download = True
    c.data.batch_size = 512
    c.data.eval_flip = True
    c.data.eval_translate = 2
    c.model.name = "resnet18"
    c.model.widths = (64, 128, 256, 512)
    c.model.compute_dtype = "bfloat16"
    c.optimizer.learning_rate = 0.4
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_fraction = 0.1
    c.optimizer.decay = "cosine"
    c.eval_every_epochs = 5
    c.checkpoint.every_epochs = 5
    return objective_variant(c, arg)
