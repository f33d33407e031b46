"""A small, offline stand-in for ``kustomize build`` (no kustomize binary here).

It supports exactly the kustomization fields runstream's manifests use —
``resources``, ``patches`` (strategic-merge patch files), ``images``,
``replicas``, ``namespace`` and ``secretGenerator`` from files (with
``generatorOptions.disableNameSuffixHash``) — and refuses anything else, so a
manifest that starts using another feature fails loudly instead of rendering wrongly.

Beyond rendering it checks what kustomize would reject (missing files,
patches without a target, duplicate resources) and a few things it silently
accepts (an ``images`` or ``replicas`` entry that matches nothing).
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "patches",
    "images",
    "replicas",
    "secretGenerator",
    "generatorOptions",
}

# patchMergeKey of the Kubernetes list fields our patches touch; other lists are replaced.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}

CLUSTER_SCOPED = {
    "Namespace",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
}
SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet"}


class KustomizeError(Exception):
    """The kustomization cannot be built as written."""


def load_documents(path: Path) -> list[Resource]:
    """Every non-empty YAML document of ``path`` (each must be a mapping)."""
    with path.open(encoding="utf-8") as handle:
        docs = [doc for doc in yaml.load_all(handle, Loader=Loader) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeError(f"{path}: a document is not a mapping")
    return docs


def resource_id(resource: Resource) -> tuple[str, str, str]:
    return (resource["apiVersion"], resource["kind"], resource["metadata"]["name"])


def load_kustomization(directory: Path) -> Resource:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    docs = load_documents(path)
    if len(docs) != 1:
        raise KustomizeError(f"{path}: expected one document, found {len(docs)}")
    kustomization = docs[0]
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields not supported by kustomize-lite: {sorted(unknown)}")
    if kustomization.get("kind") != "Kustomization":
        raise KustomizeError(f"{path}: kind must be Kustomization")
    return kustomization


def referenced_files(directory: Path) -> set[Path]:
    """kustomization.yaml files, resources and patches reachable from ``directory``."""
    kustomization = load_kustomization(directory)
    found = {(directory / "kustomization.yaml").resolve()}
    for ref in kustomization.get("resources", []):
        target = (directory / ref).resolve()
        found |= referenced_files(target) if target.is_dir() else {target}
    for patch in kustomization.get("patches", []):
        found.add((directory / patch["path"]).resolve())
    return found


def kustomize_base64(value: bytes) -> str:
    """Base64 as kustomize writes a generated Secret's data: 70-column lines, each ended
    by a newline once there is more than one line."""
    text = base64.b64encode(value).decode()
    width = 70
    if len(text) // width + 1 <= 1:
        return text
    return "".join(text[i : i + width] + "\n" for i in range(0, len(text), width))


def generated_secrets(directory: Path, kustomization: Resource) -> list[Resource]:
    """The Secrets of ``secretGenerator`` (``files`` only, names without a hash suffix).

    Like kustomize, a missing file is an error: an overlay whose secrets are files
    outside git does not render without them."""
    generators = kustomization.get("secretGenerator", [])
    options = kustomization.get("generatorOptions", {})
    if set(options) - {"disableNameSuffixHash"}:
        raise KustomizeError(f"{directory}: generatorOptions not supported: {sorted(options)}")
    if generators and options.get("disableNameSuffixHash") is not True:
        raise KustomizeError(
            f"{directory}: secretGenerator needs generatorOptions.disableNameSuffixHash: true "
            "(kustomize-lite does not compute name hashes)"
        )
    secrets: list[Resource] = []
    for generator in generators:
        unknown = set(generator) - {"name", "files", "type"}
        if unknown:
            raise KustomizeError(f"{directory}: secretGenerator fields not supported: {unknown}")
        data: dict[str, str] = {}
        for entry in generator.get("files", []):
            key, sep, path = entry.partition("=")
            if not sep:
                key, path = Path(entry).name, entry
            source = directory / path
            if not source.is_file():
                raise KustomizeError(
                    f"{directory}: secretGenerator {generator['name']}: file {path!r} does not exist"
                )
            data[key] = kustomize_base64(source.read_bytes())
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": generator["name"]},
                "type": generator.get("type", "Opaque"),
                "data": data,
            }
        )
    return secrets


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """Merge ``patch`` into a copy of ``base`` the way a strategic merge patch does
    for the fields we use: maps merge key by key, ``null`` removes a key, lists in
    MERGE_KEYS merge item by item on their merge key, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        directives = [key for key in patch if key.startswith("$")]
        if directives:
            raise KustomizeError(f"unsupported patch directive(s) {directives} below the top level")
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        # As Kubernetes' strategic merge orders it: the patch's items first (merged with
        # their base item), in the patch's order, then the base items the patch leaves alone.
        key = MERGE_KEYS[field]
        by_key = {item.get(key): item for item in base if isinstance(item, dict)}
        merged_list = []
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise KustomizeError(f"an item of {field} in a patch has no {key!r}")
            existing = by_key.get(item[key])
            merged_list.append(
                copy.deepcopy(item) if existing is None else strategic_merge(existing, item, None)
            )
        patched = {item[key] for item in patch}
        merged_list += [
            copy.deepcopy(i) for i in base if not (isinstance(i, dict) and i.get(key) in patched)
        ]
        return merged_list
    return copy.deepcopy(patch)


def pod_specs(resource: Resource) -> list[Resource]:
    """The pod specs inside a workload resource (none for other kinds)."""
    spec = resource.get("spec", {})
    if resource["kind"] in SCALABLE | {"Job", "DaemonSet"}:
        return [spec["template"]["spec"]]
    if resource["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if resource["kind"] == "Pod":
        return [spec]
    return []


def containers(resource: Resource) -> list[Resource]:
    return [
        container
        for pod in pod_specs(resource)
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]
    ]


def image_name(image: str) -> str:
    """``registry/name:tag`` or ``name@sha256:...`` without tag or digest."""
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    if ":" in last:
        return without_digest[: len(without_digest) - len(last)] + last.split(":", 1)[0]
    return without_digest


def build(directory: Path) -> list[Resource]:
    """Render the kustomization in ``directory`` like ``kustomize build`` would."""
    directory = directory.resolve()
    kustomization = load_kustomization(directory)
    resources: list[Resource] = []
    for ref in kustomization.get("resources", []):
        target = directory / ref
        if target.is_dir():
            resources.extend(build(target))
        elif target.is_file():
            resources.extend(load_documents(target))
        else:
            raise KustomizeError(f"{directory}: resource {ref!r} does not exist")
    resources.extend(generated_secrets(directory, kustomization))
    seen: set[tuple[str, str, str]] = set()
    for resource in resources:
        rid = resource_id(resource)
        if rid in seen:
            raise KustomizeError(f"{directory}: resource {rid} defined twice")
        seen.add(rid)

    for entry in kustomization.get("patches", []):
        unknown = set(entry) - {"path"}
        if unknown:
            raise KustomizeError(f"{directory}: patch fields not supported: {sorted(unknown)}")
        path = directory / entry["path"]
        if not path.is_file():
            raise KustomizeError(f"{directory}: patch {entry['path']!r} does not exist")
        docs = load_documents(path)
        if len(docs) != 1:
            raise KustomizeError(f"{path}: one patch per file, found {len(docs)}")
        patch = docs[0]
        matches = [i for i, r in enumerate(resources) if resource_id(r) == resource_id(patch)]
        if not matches:
            raise KustomizeError(f"{path}: no resource {resource_id(patch)} to patch")
        index = matches[0]
        directive = patch.get("$patch")
        if directive == "delete":
            del resources[index]
        elif directive is None:
            resources[index] = strategic_merge(resources[index], patch)
        else:
            raise KustomizeError(f"{path}: unsupported $patch: {directive}")

    for entry in kustomization.get("images", []):
        hits = 0
        for resource in resources:
            for container in containers(resource):
                if image_name(container["image"]) != entry["name"]:
                    continue
                hits += 1
                name = entry.get("newName", entry["name"])
                tag = entry.get("newTag")
                digest = entry.get("digest")
                container["image"] = (
                    f"{name}@{digest}" if digest else f"{name}:{tag}" if tag else name
                )
        if not hits:
            raise KustomizeError(
                f"{directory}: images entry {entry['name']!r} matches no container"
            )

    for entry in kustomization.get("replicas", []):
        targets = [
            r for r in resources if r["kind"] in SCALABLE and r["metadata"]["name"] == entry["name"]
        ]
        if not targets:
            raise KustomizeError(f"{directory}: replicas entry {entry['name']!r} matches nothing")
        for resource in targets:
            resource["spec"]["replicas"] = int(entry["count"])

    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace
    return resources
