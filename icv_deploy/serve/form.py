"""One `POST /v1/infer` request -> a checked `Job`, or an `ApiError` that carries its HTTP status.

Everything a client can get wrong is caught here, in the gateway, before the request takes a place in the model's
queue: 400 a bad form, 413 too large (body, pixels, instruction count or length), 415 not an image, 422 an
instruction that fits no task. The image is decoded once here to check it and travels to the model as the bytes
the client sent (smaller than the pixels); no field names a path.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..errors import IcvError, ImageError, InstructionError
from ..images import load_image
from ..sampling import SAMPLERS
from ..tasks.encodings import TASKS
from ..tasks.routing import route
from .settings import ServeSettings

FIELDS = ("image", "instruction", "steps", "sampler", "seed", "resolution", "task", "pictures")
MAX_SEED = 2**63 - 1


class ApiError(Exception):
    """An answer other than 200: status, a one-line message for the JSON body, and extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Job:
    """What the model deployment runs: one request's image and instructions with its settings."""

    image: bytes
    instructions: list[str]
    steps: int | None = None  # None: the model's default
    sampler: str | None = None
    seed: int = 0
    resolution: object = ...  # ...: the model's default; None: the input size; else the long side in pixels
    task: str | None = None
    pictures: bool = False

    def batch_key(self) -> tuple:
        """Jobs with the same key can share a UNet batch (run_pairs then splits them by working size)."""
        return (self.steps, self.sampler, self.resolution)


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (whatever Content-Length says)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is over the limit of {limit:,} bytes")
    return bytes(body)


async def parse_form(request, body: bytes, settings: ServeSettings):
    """The multipart form of `body` (already read within its limit), with Starlette's parser."""
    from starlette.requests import Request

    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(400, "send a multipart/form-data form with an `image` file and `instruction` field(s)")

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=1, max_fields=settings.max_instructions + 16,
                                                         max_part_size=settings.max_body_bytes)
    except Exception as exc:  # starlette's MultiPartException / HTTPException: a malformed or over-full form
        message = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise ApiError(400, f"malformed multipart form: {message}") from None


def job_from_form(form, settings: ServeSettings) -> Job:
    """Check every field of the form; the image is checked separately (`decode_image`, in a thread)."""
    unknown = sorted(set(form.keys()) - set(FIELDS))
    if unknown:
        raise ApiError(400, f"unknown form field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    images = form.getlist("image")
    if len(images) != 1 or isinstance(images[0], str):
        raise ApiError(400, "send exactly one `image` field, as a file")
    instructions = [text.strip() if isinstance(text, str) else None for text in form.getlist("instruction")]
    if not instructions:
        raise ApiError(400, "no `instruction` field: send one or more, e.g. instruction=Segment the cat")
    if any(text is None for text in instructions):
        raise ApiError(400, "`instruction` must be text, not a file")
    if any(not text for text in instructions):
        raise ApiError(400, "an `instruction` field is empty")
    if len(instructions) > settings.max_instructions:
        raise ApiError(413, f"{len(instructions)} instructions: at most {settings.max_instructions} a request")
    for text in instructions:
        if len(text) > settings.max_instruction_chars:
            raise ApiError(413, f"an instruction of {len(text)} characters: at most {settings.max_instruction_chars}")
    task = _choice(form, "task", TASKS)
    for text in instructions:
        try:
            route(text, task=task)
        except InstructionError as exc:
            raise ApiError(422, " ".join(str(exc).split())) from None
    return Job(
        image=b"",  # filled by the caller once the file is read and checked
        instructions=instructions,
        steps=_integer(form, "steps", 1, settings.max_steps),
        sampler=_choice(form, "sampler", tuple(SAMPLERS)),
        seed=_integer(form, "seed", 0, MAX_SEED) or 0,
        resolution=_resolution(form, settings.max_resolution),
        task=task,
        pictures=_flag(form, "pictures"),
    )


def decode_image(data: bytes, max_pixels: int):
    """An uploaded file as HxWx3 uint8 RGB (EXIF rotation applied, as `images.load_image` does), or the ApiError
    for it: 413 over the pixel limit (read from the header, before decoding), 415 not a readable image, 400 too
    small."""
    if not data:
        raise ApiError(400, "the `image` file is empty")
    try:
        with warnings.catch_warnings():  # the pixel limit below replaces PIL's warning (as images.open_image does)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise ApiError(413, f"image of {width}x{height} px is over the limit of {max_pixels:,} pixels")
            img.load()
            array = load_image(img, name="image")
    except ApiError:
        raise
    except ImageError as exc:
        raise ApiError(400, " ".join(str(exc).split())) from None
    except Image.DecompressionBombError:
        raise ApiError(413, f"image is over the limit of {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise ApiError(415, "the `image` file is not an image this server can read (PNG, JPEG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(415, f"the `image` file is unreadable or truncated ({' '.join(str(exc).split())})") from None
    return array


# -- fields ----------------------------------------------------------------------------------------------------
def _text(form, name: str) -> str | None:
    values = form.getlist(name)
    if not values:
        return None
    if len(values) > 1 or not isinstance(values[0], str):
        raise ApiError(400, f"`{name}` must be given once, as text")
    return values[0].strip() or None


def _integer(form, name: str, low: int, high: int) -> int | None:
    text = _text(form, name)
    if text is None:
        return None
    if not text.lstrip("-").isdigit() or not low <= int(text) <= high:
        raise ApiError(400, f"`{name}` must be a whole number from {low} to {high}, not {text[:40]!r}")
    return int(text)


def _choice(form, name: str, choices: tuple) -> str | None:
    text = _text(form, name)
    if text is not None and text not in choices:
        raise ApiError(400, f"`{name}` {text[:40]!r}: choose one of {', '.join(choices)}")
    return text


def _resolution(form, high: int):
    text = _text(form, "resolution")
    if text is None:
        return ...
    if text.lower() == "native":
        return None
    if not text.isdigit() or not 16 <= int(text) <= high:
        raise ApiError(400, f"`resolution` must be a long side from 16 to {high} px or 'native', not {text[:40]!r}")
    return int(text)


def _flag(form, name: str) -> bool:
    text = _text(form, name)
    if text is None:
        return False
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ApiError(400, f"`{name}` must be true or false, not {text[:40]!r}")
    return text.lower() in ("true", "1", "yes")


def status_of(exc: IcvError) -> int:
    """The HTTP status of a bad-input error raised past the gateway's checks (in a replica)."""
    if isinstance(exc, InstructionError):
        return 422
    if isinstance(exc, ImageError):
        return 415
    return 400
