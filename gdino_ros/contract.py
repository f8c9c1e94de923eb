"""The TAO Mask Grounding DINO contract: every fact that more than one stage relies on.

What these facts mean and where they come from (TAO 7.0.1's export, deploy and training code):
``docs/engine_contract.md``. Engine I/O names, shapes, normalisation constants, special token ids and the
post-processing defaults are defined here once; every other module imports them.
"""
from __future__ import annotations

import numpy as np

# --- Engine inputs, in TAO's binding order ----------------------------------------------------------
INPUT_IMAGE = "inputs"  # float32 [1, 3, H, W], normalised RGB, NCHW (a camera-input export: see below)
# The text inputs have T = MAX_TEXT_LEN tokens (TAO's ONNX, engines built from it), or any T up to it for
# an export with a dynamic token axis, which the backends give a prompt's real tokens plus one padding
# token (docs/engine_contract.md#text-length).
INPUT_IDS = "input_ids"  # int64 [1, T], BERT ids padded with PAD_ID
ATTENTION_MASK = "attention_mask"  # bool [1, T], True for real tokens (incl. [CLS]/[SEP])
POSITION_IDS = "position_ids"  # int64 [1, T], position inside each phrase
TOKEN_TYPE_IDS = "token_type_ids"  # int64 [1, T], all zero
TEXT_TOKEN_MASK = "text_token_mask"  # bool [1, T, T], block-diagonal phrase attention

INPUT_NAMES: tuple[str, ...] = (
    INPUT_IMAGE,
    INPUT_IDS,
    ATTENTION_MASK,
    POSITION_IDS,
    TOKEN_TYPE_IDS,
    TEXT_TOKEN_MASK,
)
TEXT_INPUT_NAMES: tuple[str, ...] = INPUT_NAMES[1:]

INPUT_DTYPES: dict[str, np.dtype] = {
    INPUT_IMAGE: np.dtype(np.float32),
    INPUT_IDS: np.dtype(np.int64),
    ATTENTION_MASK: np.dtype(np.bool_),
    POSITION_IDS: np.dtype(np.int64),
    TOKEN_TYPE_IDS: np.dtype(np.int64),
    TEXT_TOKEN_MASK: np.dtype(np.bool_),
}

# --- Engine outputs -----------------------------------------------------------------------------------
PRED_LOGITS = "pred_logits"  # float32 [1, Q, 256], -inf at padded tokens
PRED_BOXES = "pred_boxes"  # float32 [1, Q, 4], normalised (cx, cy, w, h) of the input tensor
PRED_MASKS = "pred_masks"  # float32 [1, Q, 1, H/4, W/4], mask logits
NO_TARGETS = "no_targets"  # float32 [1, 2], logits; index NO_TARGET_INDEX means "no target"
UNION_MASK_LOGITS = "union_mask_logits"  # float32 [1, 2, H/8, W/8]; channel 1 is foreground

OUTPUT_NAMES: tuple[str, ...] = (PRED_LOGITS, PRED_BOXES, PRED_MASKS)
RELA_OUTPUT_NAMES: tuple[str, ...] = OUTPUT_NAMES + (NO_TARGETS, UNION_MASK_LOGITS)
NO_TARGET_INDEX = 1

# --- Shapes -------------------------------------------------------------------------------------------
BATCH_SIZE = 1  # TAO's export only runs at batch 1, whatever the ONNX declares
MAX_TEXT_LEN = 256  # the prompt's tokens are padded to this; the outputs' token axis always has it
NUM_QUERIES = 900
DEFAULT_INPUT_HEIGHT = 544
DEFAULT_INPUT_WIDTH = 960
MASK_STRIDE = 4  # pred_masks resolution relative to the input tensor
UNION_MASK_STRIDE = 8  # union_mask_logits resolution relative to the input tensor
MIN_IMAGE_SIDE = 32  # smaller camera images are rejected
MAX_IMAGE_PIXELS = 40_000_000  # larger camera images are rejected before decoding (8K UHD is 33.2 MP)
ONNX_OPSET = 17
# A camera-input export (gdino-export --camera-input) takes the camera's pixels instead: uint8
# [1, CAMERA_HEIGHT_AXIS, CAMERA_WIDTH_AXIS, 3] RGB, resized and normalised inside the graph
# (docs/engine_contract.md#camera-input). A TensorRT engine takes camera sizes from MIN_IMAGE_SIDE up to
# MAX_CAMERA_SIDE on each side (its optimisation profile, tuned for CAMERA_OPT_HW).
CAMERA_HEIGHT_AXIS = "image_height"
CAMERA_WIDTH_AXIS = "image_width"
CAMERA_OPT_HW = (1080, 1920)
MAX_CAMERA_SIDE = 4096
MSDA_PLUGIN_OP = "MultiscaleDeformableAttnPlugin_TRT"  # TensorRT's deformable attention plugin

# --- ONNX metadata_props written by gdino-export (all values are strings) ---------------------------------
META_SOURCE = "source"  # "random-init" or "checkpoint <path> sha256 <hex>"
RANDOM_INIT_SOURCE = "random-init"  # untrained weights: demos and tests only
META_NUM_REGION_QUERIES = "num_region_queries"  # "0" -> 3 outputs, else 5 (ReLA)
META_NUM_QUERIES = "num_queries"
META_MAX_TEXT_LEN = "max_text_len"
META_INPUT_HEIGHT = "input_height"
META_INPUT_WIDTH = "input_width"
META_MSDA = "msda"  # "grid-sample" or "plugin" (needs TensorRT's MultiscaleDeformableAttnPlugin_TRT)
META_LOG_SCALE = "log_scale"  # the class head's scaling: "auto", "none" or the learnable scale's init
META_CLASS_EMBED_BIAS = "class_embed_bias"  # "True" or "False"
META_VOCAB = "bert_vocab"  # the tokenizer's vocab.txt, so a model file needs nothing beside it
META_VERSION = "gdino_ros_version"
META_IMAGE_INPUT = "image_input"  # IMAGE_INPUT_TENSOR (TAO's interface) or IMAGE_INPUT_CAMERA
IMAGE_INPUT_TENSOR = "tensor"  # float32 [1, 3, H, W], preprocessed by the caller
IMAGE_INPUT_CAMERA = "camera"  # uint8 [1, h, w, 3] RGB of any camera size, preprocessed in the graph

# --- Image normalisation (training values; TAO Deploy's std 0.224 on every channel is a bug) --------------
IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# The same normalisation of 0-255 pixels as one multiply-add per RGB channel: x * IMAGE_SCALE + IMAGE_OFFSET
# (the CPU preprocessing and a camera-input graph both compute it this way).
IMAGE_SCALE: tuple[float, ...] = tuple(1.0 / (255.0 * s) for s in IMAGE_STD)
IMAGE_OFFSET: tuple[float, ...] = tuple(-m / s for m, s in zip(IMAGE_MEAN, IMAGE_STD, strict=True))

# --- bert-base-uncased special tokens -----------------------------------------------------------------
PAD_ID = 0
CLS_ID = 101
SEP_ID = 102
PERIOD_ID = 1012
QUESTION_ID = 1029
# Tokens that close a phrase block in position_ids / text_token_mask.
DELIMITER_IDS: frozenset[int] = frozenset({CLS_ID, SEP_ID, PERIOD_ID, QUESTION_ID})
TEXT_ENCODER_TYPE = "bert-base-uncased"

# --- Post-processing defaults (TAO inference spec) ----------------------------------------------------
NUM_SELECT = 300
CONF_THRESHOLD = 0.3
NMS_THRESHOLD = 0.2
TEXT_THRESHOLD = 0.3
IOI_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5  # on sigmoid(mask logit)
