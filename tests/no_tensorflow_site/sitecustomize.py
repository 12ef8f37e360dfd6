"""Blocks TensorFlow in subprocesses of the unit tier (active only with OPTKIT_BLOCK_TF=1)."""
import os

if os.environ.get("OPTKIT_BLOCK_TF") == "1":
    import optkit_block_tf

    optkit_block_tf.install()
