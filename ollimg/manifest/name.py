"""Model names: `[host[:port]/][namespace/]model[:tag][@sha256:<hex>]`.

The one parser of names. Host, namespace and model are lowercase OCI repository components;
the tag keeps its case (OCI tags are case sensitive). Imports nothing but errors and config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ollimg import config
from ollimg.errors import InvalidName

DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]{1,5})?|\[[0-9a-f:]+\](?::[0-9]{1,5})?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _looks_like_host(part: str) -> bool:
    return "." in part or ":" in part or part == "localhost" or part.startswith("[")


@dataclass(frozen=True, order=True)
class Name:
    host: str
    namespace: str
    model: str
    tag: str = DEFAULT_TAG
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Name":
        original = text
        if not isinstance(text, str) or not text.strip():
            raise InvalidName("model name is empty")
        text = text.strip()
        if len(text) > 500:
            raise InvalidName(f"model name is too long ({len(text)} characters, at most 500)")
        digest = None
        if "@" in text:
            text, _, digest = text.partition("@")
            digest = digest.lower()
            if not _DIGEST.fullmatch(digest):
                raise InvalidName(f"invalid name {original!r}: a digest must be sha256: and 64 hex digits")
        parts = text.split("/")
        if any(p == "" for p in parts):
            raise InvalidName(f"invalid name {original!r}: empty part between slashes")
        tag = DEFAULT_TAG
        last = parts[-1]
        if ":" in last:
            last, _, tag = last.partition(":")
            if not tag:
                raise InvalidName(f"invalid name {original!r}: empty tag after ':'")
        parts[-1] = last
        if len(parts) == 1:
            host, namespace, model = config.registry_host(), DEFAULT_NAMESPACE, parts[0]
        elif len(parts) == 2:
            if _looks_like_host(parts[0]):
                host, namespace, model = parts[0], DEFAULT_NAMESPACE, parts[1]
            else:
                host, namespace, model = config.registry_host(), parts[0], parts[1]
        elif len(parts) == 3:
            host, namespace, model = parts
        else:
            raise InvalidName(f"invalid name {original!r}: use [host/][namespace/]model[:tag]")
        name = cls(host.lower(), namespace.lower(), model.lower(), tag, digest)
        name._validate(original)
        return name

    def _validate(self, original: str) -> None:
        if len(self.host) > 350 or not _HOST.fullmatch(self.host):
            raise InvalidName(f"invalid name {original!r}: {self.host!r} is not a valid registry host")
        port = self.host.rpartition("]")[2].partition(":")[2]
        if port and not 1 <= int(port) <= 65535:
            raise InvalidName(f"invalid name {original!r}: registry port {port} is out of range: use 1 to 65535")
        for what, value in (("namespace", self.namespace), ("model", self.model)):
            if len(value) > 80:
                raise InvalidName(f"invalid name {original!r}: {what} is longer than 80 characters")
            if not _COMPONENT.fullmatch(value):
                raise InvalidName(
                    f"invalid name {original!r}: {what} {value!r} may only hold a-z, 0-9 and single . _ - between them"
                )
        if not _TAG.fullmatch(self.tag):
            raise InvalidName(
                f"invalid name {original!r}: tag {self.tag!r} must start with a letter, digit or _ and hold "
                "at most 128 of A-Z a-z 0-9 _ . -"
            )

    @property
    def repository(self) -> str:
        """The registry repository: `namespace/model`."""
        return f"{self.namespace}/{self.model}"

    @property
    def reference(self) -> str:
        """What the registry's manifest endpoint takes: the digest if pinned, else the tag."""
        return self.digest or self.tag

    def with_tag(self, tag: str) -> "Name":
        name = Name(self.host, self.namespace, self.model, tag)
        name._validate(str(name))
        return name

    def display(self) -> str:
        """Short form: drops the default host and namespace, keeps `:tag`."""
        parts = []
        if self.host != config.registry_host():
            parts += [self.host, self.namespace]
        elif self.namespace != DEFAULT_NAMESPACE:
            parts.append(self.namespace)
        text = "/".join(parts + [self.model]) + f":{self.tag}"
        return text + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        text = f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        return text + (f"@{self.digest}" if self.digest else "")
