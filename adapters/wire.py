"""WebSocket protocol v1 (README "The WebSocket protocol (v1)"): every frame both ways, typed.

The one definition of v1, shared by the server (`adapters.web`), the `concordia join`
client (`adapters.terminal`) and the tests. Parsing never raises, whatever arrives: a frame
that is not v1 comes back as an `Invalid` value saying why, for the server to answer and the
client to log. Formatting writes every field of a frame, in the order the README lists them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    Strict,
    ValidationError,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from bot.model import Decision

__all__ = [
    "PROTOCOL_VERSION",
    "Answer",
    "Approval",
    "ApprovalDone",
    "Approve",
    "Batch",
    "ClientFrame",
    "ClientId",
    "ClientKind",
    "CloseCode",
    "Command",
    "CommandResult",
    "Done",
    "Error",
    "ErrorCode",
    "Group",
    "Invalid",
    "Join",
    "Output",
    "Prompt",
    "PromptImage",
    "Question",
    "QuestionDone",
    "QuestionOption",
    "Queued",
    "Rejected",
    "ServerFrame",
    "ServerKind",
    "Source",
    "System",
    "Welcome",
    "format_frame",
    "parse_client_frame",
    "parse_server_frame",
]

PROTOCOL_VERSION: Final = 1
"""What the server's `welcome` says; a client refuses a host that says anything else."""


class CloseCode(enum.IntEnum):
    """The WebSocket close codes v1 gives a meaning to."""

    NORMAL_CLOSURE = 1000  # the client left (`leave`), after its last frames
    POLICY_VIOLATION = 1008  # no join in time, join_expected, bad_name or name_taken
    MESSAGE_TOO_BIG = 1009  # a frame over websocket.max_frame_bytes (the library closes)
    BAD_TOKEN = 4001  # after an error frame with code bad_token
    TOO_SLOW = 4008  # the client fell 100,000 frames behind


class ErrorCode(enum.StrEnum):
    """The ``code`` of an `Error` frame. A reader may meet codes it does not know."""

    JOIN_EXPECTED = "join_expected"  # the first frame was not a join; close 1008 follows
    BAD_NAME = "bad_name"  # join's name is not 1-64 characters; close 1008 follows
    BAD_TOKEN = "bad_token"  # the invite token was refused; close 4001 follows
    TOO_MANY_ATTEMPTS = "too_many_attempts"  # this address's joins keep failing; close 1008
    NAME_TAKEN = "name_taken"  # a member has this name with another role; close 1008 follows
    MALFORMED = "malformed"  # not one JSON object, or a known type with a bad field
    UNKNOWN_TYPE = "unknown_type"  # a type this side does not know (or no type at all)


class ClientKind(enum.StrEnum):
    """The ``type`` of a frame a client sends."""

    JOIN = "join"
    PROMPT = "prompt"
    COMMAND = "command"
    APPROVE = "approve"
    ANSWER = "answer"


class ServerKind(enum.StrEnum):
    """The ``type`` of a frame the server sends."""

    WELCOME = "welcome"
    ERROR = "error"
    QUEUED = "queued"
    REJECTED = "rejected"
    BATCH = "batch"
    OUTPUT = "output"
    DONE = "done"
    SYSTEM = "system"
    APPROVAL = "approval"
    APPROVAL_DONE = "approval_done"
    QUESTION = "question"
    QUESTION_DONE = "question_done"
    COMMAND_RESULT = "command_result"


class _Frame(BaseModel):
    # Strict: JSON's true is not an id and "1" is not a number. Unknown fields are ignored,
    # so a newer peer may add some.
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")


def _client_id(value: object) -> str | int:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise PydanticCustomError("client_id_type", "must be a string or an integer")


ClientId = Annotated[str | int, PlainValidator(_client_id)]
"""A prompt's id chosen by its client; the server answers with it as it came."""


def _token(value: object) -> str:
    # A token that is not a string is refused as a wrong one is (bad_token, and it counts
    # against the address), not reported as malformed: a refused join says nothing about why.
    return value if isinstance(value, str) else ""


def _base64(value: object) -> bytes:
    if isinstance(value, bytes):  # built in code, not parsed: already the bytes
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("base64_type", "must be a base64 string")
    try:
        # validate: a character outside the alphabet is an error, not skipped.
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # ValueError: a character that is not ASCII
        raise PydanticCustomError(
            "base64", "is not base64 (A-Z, a-z, 0-9, + and /, padded with =; no data: prefix)"
        ) from None


def _to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


Base64Data = Annotated[bytes, PlainValidator(_base64), PlainSerializer(_to_base64, return_type=str)]
"""Bytes that travel as standard base64 text; anything else in the field is malformed."""


# --- client -> server ----------------------------------------------------------------------


class Join(_Frame):
    """The first frame, within `websocket.join_timeout_s`. The token travels only here."""

    type: Literal[ClientKind.JOIN] = ClientKind.JOIN
    token: Annotated[str, PlainValidator(_token)] = ""
    name: str
    # The running batch and its output so far follow the welcome (a page that reconnects).
    catch_up: bool = False


class PromptImage(_Frame):
    """An image sent with a prompt (pasted into the page). The server checks its bytes are
    the ``media_type`` they claim and within ``party.max_image_bytes``."""

    name: str
    media_type: str  # image/png, image/jpeg, image/gif or image/webp
    data: Base64Data


class Prompt(_Frame):
    """A prompt; resending one with the same ``id`` is answered, not stored twice."""

    type: Literal[ClientKind.PROMPT] = ClientKind.PROMPT
    id: ClientId
    text: str
    # None: no images (the field is left out, as every client before images sent it).
    images: Annotated[tuple[PromptImage, ...], Strict(False)] | None = None


class Command(_Frame):
    """A command (status, queue, cancel, shell, …), answered by a `CommandResult`."""

    type: Literal[ClientKind.COMMAND] = ClientKind.COMMAND
    name: str
    args: str = ""


class Approve(_Frame):
    """A decision on a tool use, answered by a `CommandResult` named approve."""

    type: Literal[ClientKind.APPROVE] = ClientKind.APPROVE
    approval_id: int
    # Lax: the enum takes its text value ("allow", "always" or "deny").
    decision: Annotated[Decision, Strict(False)]


class Answer(_Frame):
    """An answer to one of Claude's questions: an option's number, its label or one's own
    words (for a plan: 1 or Approve approves, anything else rejects, words as feedback).
    Answered by a `CommandResult` named answer."""

    type: Literal[ClientKind.ANSWER] = ClientKind.ANSWER
    question_id: int
    text: str


ClientFrame = Join | Prompt | Command | Approve | Answer

# --- server -> client ----------------------------------------------------------------------


class Welcome(_Frame):
    """The answer to a good join."""

    type: Literal[ServerKind.WELCOME] = ServerKind.WELCOME
    protocol: int
    party: str
    name: str  # the name as the party shows it
    role: str  # a Role's value: prompter, approver or host
    # The limits a prompt's images meet (party.max_image_bytes, websocket.max_frame_bytes),
    # so a client can refuse one before sending it; None: left out (an older server).
    max_image_bytes: int | None = None
    max_frame_bytes: int | None = None


class Error(_Frame):
    """A refusal (see `ErrorCode`)."""

    type: Literal[ServerKind.ERROR] = ServerKind.ERROR
    code: str
    message: str
    id: ClientId | None = None  # the prompt it answers, if it answers one; None: left out


class Queued(_Frame):
    """A prompt of this client was stored (``duplicate``: it had been, under this id)."""

    type: Literal[ServerKind.QUEUED] = ServerKind.QUEUED
    id: ClientId
    prompt_id: int
    position: int
    duplicate: bool


class Rejected(_Frame):
    """A prompt of this client was refused, and why."""

    type: Literal[ServerKind.REJECTED] = ServerKind.REJECTED
    id: ClientId
    reason: str


class Source(_Frame):
    """A prompt merged into a batch."""

    prompt_id: int
    author: str


class Group(_Frame):
    """One part of a batch's merged prompt and the prompts merged into it."""

    # Lax, the tuple only: JSON's array arrives as a list; the items stay strict.
    prompt_ids: Annotated[tuple[int, ...], Strict(False)]
    instruction: str


class Batch(_Frame):
    """A turn starts (again, with a higher attempt, after a restart); sent to everyone."""

    type: Literal[ServerKind.BATCH] = ServerKind.BATCH
    batch_id: int
    prompt: str
    attempt: int
    sources: Annotated[tuple[Source, ...], Strict(False)]
    # A prompt in no group was a reaction such as "+1".
    groups: Annotated[tuple[Group, ...], Strict(False)]


class Output(_Frame):
    """A piece of Claude's answer, to append."""

    type: Literal[ServerKind.OUTPUT] = ServerKind.OUTPUT
    batch_id: int
    text: str


class Done(_Frame):
    """A turn ended."""

    type: Literal[ServerKind.DONE] = ServerKind.DONE
    batch_id: int
    status: str  # a TurnStatus value; a reader may meet one it does not know yet
    detail: str


class System(_Frame):
    """A notice for everyone (e.g. a batch is re-run after Claude restarted)."""

    type: Literal[ServerKind.SYSTEM] = ServerKind.SYSTEM
    message: str


class Approval(_Frame):
    """Claude asks to use a tool; also sent on joining while one waits."""

    type: Literal[ServerKind.APPROVAL] = ServerKind.APPROVAL
    approval_id: int
    batch_id: int
    tool: str
    summary: str
    input: str
    needed: int  # approvers it takes
    timeout_s: float


class ApprovalDone(_Frame):
    """A tool-use request was decided; sent to everyone."""

    type: Literal[ServerKind.APPROVAL_DONE] = ServerKind.APPROVAL_DONE
    approval_id: int
    batch_id: int
    allowed: bool
    text: str


class QuestionOption(_Frame):
    """One answer Claude offers; a `Question`'s options are numbered from 1."""

    label: str
    description: str


class Question(_Frame):
    """Claude asks the group (a question with options, or to approve its plan, shown just
    before in the output); also sent on joining while one waits. Answered by `Answer`."""

    type: Literal[ServerKind.QUESTION] = ServerKind.QUESTION
    question_id: int
    batch_id: int
    kind: str  # a QuestionKind value, choice or plan; a reader may meet one it does not know
    header: str
    text: str
    options: Annotated[tuple[QuestionOption, ...], Strict(False)]
    multi_select: bool  # several options may be chosen: "1, 3"
    answerers: str  # an Answerers value: authors, members or approvers (plans: approvers)
    timeout_s: float  # then Claude is told nobody answered


class QuestionDone(_Frame):
    """A question was answered, or nobody answered in time; sent to everyone."""

    type: Literal[ServerKind.QUESTION_DONE] = ServerKind.QUESTION_DONE
    question_id: int
    batch_id: int
    answered: bool
    text: str  # one line: "alice answered: SQLite"


class CommandResult(_Frame):
    """The answer to a `Command`, an `Approve` or an `Answer`."""

    type: Literal[ServerKind.COMMAND_RESULT] = ServerKind.COMMAND_RESULT
    name: str
    ok: bool
    text: str
    public: bool  # meant for everyone, as a shell command's output is


ServerFrame = (
    Welcome
    | Error
    | Queued
    | Rejected
    | Batch
    | Output
    | Done
    | System
    | Approval
    | ApprovalDone
    | Question
    | QuestionDone
    | CommandResult
)

# --- parsing and formatting ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a frame is not a v1 frame; the parse functions return it rather than raise."""

    code: Literal[ErrorCode.MALFORMED, ErrorCode.UNKNOWN_TYPE]
    message: str  # one line, fit to send back or to log
    kind: ClientKind | ServerKind | None = None  # the frame's type, when it is a known one
    field: str = ""  # where its first bad field is, e.g. "sources[0].author"
    id: str | int | None = None  # a malformed prompt's own id, so its answer can name it

    def as_error(self) -> Error:
        """The error frame that answers it (naming the prompt, when it was one with an id)."""
        return Error(code=self.code, message=self.message, id=self.id)


_CLIENT_FRAMES: Final[Mapping[str, type[ClientFrame]]] = {
    ClientKind.JOIN: Join,
    ClientKind.PROMPT: Prompt,
    ClientKind.COMMAND: Command,
    ClientKind.APPROVE: Approve,
    ClientKind.ANSWER: Answer,
}
_SERVER_FRAMES: Final[Mapping[str, type[ServerFrame]]] = {
    ServerKind.WELCOME: Welcome,
    ServerKind.ERROR: Error,
    ServerKind.QUEUED: Queued,
    ServerKind.REJECTED: Rejected,
    ServerKind.BATCH: Batch,
    ServerKind.OUTPUT: Output,
    ServerKind.DONE: Done,
    ServerKind.SYSTEM: System,
    ServerKind.APPROVAL: Approval,
    ServerKind.APPROVAL_DONE: ApprovalDone,
    ServerKind.QUESTION: Question,
    ServerKind.QUESTION_DONE: QuestionDone,
    ServerKind.COMMAND_RESULT: CommandResult,
}
# What the server answers a malformed frame of each kind with.
_CLIENT_NEEDS: Final[Mapping[ClientKind, str]] = {
    ClientKind.JOIN: "join needs a string name",
    ClientKind.PROMPT: "prompt needs an id and a text",
    ClientKind.COMMAND: "command needs a name and string args",
    ClientKind.APPROVE: "approve needs an integer approval_id and a decision: "
    "allow, always or deny",
    ClientKind.ANSWER: "answer needs an integer question_id and a text: an option's number, "
    "its label or your own words",
}
# A prompt's images get the field's own problem, and what an image is.
_IMAGES_FIELD = "images"
_IMAGE_SHAPE = "images is a list of {name, media_type, data (base64)}"
_NOT_AN_OBJECT: Final = "a frame must be one JSON object"
_SHOWN_TYPE_CHARS: Final = 64
_PROBLEMS: Final[Mapping[str, str]] = {
    "missing": "is missing",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "tuple_type": "must be a list",
    "model_type": "must be an object",
}

_F = TypeVar("_F", bound=_Frame)


def parse_client_frame(raw: str | bytes) -> ClientFrame | Invalid:
    """One frame from a client, or why it is not one; `Invalid.message` is the server's
    answer, saying what a frame of its kind needs. Never raises."""
    frame = _parse(raw, _CLIENT_FRAMES)
    if isinstance(frame, Invalid) and isinstance(frame.kind, ClientKind):
        message = _CLIENT_NEEDS[frame.kind]
        if frame.kind is ClientKind.PROMPT and frame.field.startswith(_IMAGES_FIELD):
            message = f"{frame.message}; {_IMAGE_SHAPE}"
        return Invalid(frame.code, message, frame.kind, frame.field, frame.id)
    return frame


def parse_server_frame(raw: str | bytes) -> ServerFrame | Invalid:
    """One frame from the server, or why it is not one (naming the field). Never raises."""
    return _parse(raw, _SERVER_FRAMES)


def format_frame(frame: ClientFrame | ServerFrame) -> str:
    """The text of one WebSocket frame: every field, keys in the README's order.

    v1 has no null: a field that is None (an error's absent ``id``) is left out.
    """
    data = frame.model_dump(exclude_none=True)
    text = json.dumps(data, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (JSON may carry "\ud800", and Python keeps it as is) has no
            # UTF-8 form, so the frame could not be sent: escape it instead.
            return json.dumps(data)
    return text


def _parse(raw: str | bytes, frames: Mapping[str, type[_F]]) -> _F | Invalid:
    try:
        decoded: object = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (ValueError, RecursionError):
        # ValueError: not UTF-8, not JSON, or an integer past Python's 4300-digit limit.
        # RecursionError: json.loads recurses once per level of nesting.
        return Invalid(ErrorCode.MALFORMED, _NOT_AN_OBJECT)
    if not isinstance(decoded, dict):
        return Invalid(ErrorCode.MALFORMED, _NOT_AN_OBJECT)
    kind = decoded.get("type")
    model = frames.get(kind) if isinstance(kind, str) else None
    if model is None:
        return Invalid(ErrorCode.UNKNOWN_TYPE, _unknown_type(kind))
    try:
        return model.model_validate(decoded)
    except ValidationError as exc:
        known = model.model_fields["type"].default
        error = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        where = _where(error)
        what = _PROBLEMS.get(error["type"], error["msg"])
        message = f"{known} frame: field {where!r} {what}"
        return Invalid(ErrorCode.MALFORMED, message, known, where, _prompt_id(known, decoded))


def _prompt_id(kind: object, frame: dict[str, object]) -> str | int | None:
    """A malformed prompt's id when it is a good one: the error answering it names it, so
    the client can stop waiting for that prompt (one with a bad image, say)."""
    client_id = frame.get("id")
    if kind is not ClientKind.PROMPT or isinstance(client_id, bool):
        return None
    return client_id if isinstance(client_id, str | int) else None


def _unknown_type(kind: object) -> str:
    if isinstance(kind, str):
        shown = repr(kind[:_SHOWN_TYPE_CHARS]) + ("…" if len(kind) > _SHOWN_TYPE_CHARS else "")
        return f"unknown frame type {shown}"
    if isinstance(kind, list | dict):  # its repr could be as deep and as long as the frame
        return "unknown frame type: the type must be a string"
    return f"unknown frame type {kind!r}"


def _where(error: ErrorDetails) -> str:
    """A field's path as in "sources[0].author"."""
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    return path.lstrip(".")
