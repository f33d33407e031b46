"""The NetworkPolicies of every rendering: who may reach what (docs/security.md).

A small evaluator answers "may a pod with these labels open TCP/UDP port P to a pod in a
namespace with those labels?" the way NetworkPolicy semantics define it (a pod selected
by a policy of a direction is denied what no rule of such a policy allows), and the
tests ask it about the places that matter: the executor runs scientists' code and must
reach Kafka (and DNS) only, never PostgreSQL or slurmrestd; only the web table accepts
connections, on its HTTP port, from the ingress controller's namespace.
"""

from __future__ import annotations

from typing import Any

import pytest

from deploy.test_manifests import KUSTOMIZATIONS, by_kind, configmap, rendered

pytestmark = pytest.mark.unit

DNS = ({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"})
KAFKA = ({"runstream.dev/kafka": "true"}, {})
POSTGRES = ({"runstream.dev/postgres": "true"}, {})
SLURMRESTD = ({"runstream.dev/slurmrestd": "true"}, {})
TELEMETRY = ({"runstream.dev/telemetry": "true"}, {})
ELSEWHERE = ({"kubernetes.io/metadata.name": "somewhere-else"}, {"app": "anything"})
INGRESS = ({"runstream.dev/ingress": "true"}, {})  # the ingress controller's namespace
PEERS = {"dns": DNS, "kafka": KAFKA, "postgres": POSTGRES, "slurmrestd": SLURMRESTD,
         "telemetry": TELEMETRY, "elsewhere": ELSEWHERE}  # fmt: skip
PORTS = {"dns": [("UDP", 53), ("TCP", 53)], "kafka": [("TCP", 9092), ("TCP", 9093)],
         "postgres": [("TCP", 5432)], "slurmrestd": [("TCP", 6820)],
         "telemetry": [("TCP", 4318)], "elsewhere": [("TCP", 443), ("TCP", 80)]}  # fmt: skip


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if selector.get("matchExpressions"):
        raise AssertionError("matchExpressions: not evaluated by this test, keep selectors simple")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def peer_matches(peer: dict[str, Any], ns_labels: dict[str, str], pod_labels: dict[str, str],
                 own_namespace: bool) -> bool:  # fmt: skip
    if "ipBlock" in peer:
        return True  # addresses: may be anything, counted as reaching everywhere
    ns = peer.get("namespaceSelector")
    if ns is None and not own_namespace:
        return False  # a bare podSelector means pods of the policy's own namespace
    return selects(ns, ns_labels) and selects(peer.get("podSelector"), pod_labels)


def port_matches(rule_ports: list[dict[str, Any]] | None, protocol: str, port: int,
                 named: dict[str, int] | None = None) -> bool:  # fmt: skip
    """``named``: the selected pod's container ports by name (ingress rules may name them)."""
    if not rule_ports:
        return True  # no ports: every port
    for item in rule_ports:
        if item.get("protocol", "TCP") != protocol:
            continue
        if "port" not in item:
            return True
        value = item["port"]
        if isinstance(value, str) and not value.isdigit():
            assert value in (named or {}), f"named port {value!r} is no container port"
            assert named is not None
            value = named[value]
        low = int(value)
        high = int(item.get("endPort", low))
        if low <= port <= high:
            return True
    return False


def egress_allowed(policies: list[dict[str, Any]], pod: dict[str, str], peer: str,
                   protocol: str, port: int) -> bool:  # fmt: skip
    ns_labels, pod_labels = PEERS[peer]
    mine = [p for p in policies if selects(p["spec"]["podSelector"], pod)
            and "Egress" in p["spec"].get("policyTypes", [])]  # fmt: skip
    if not mine:
        return True  # not isolated
    for policy in mine:
        for rule in policy["spec"].get("egress") or []:
            peers = rule.get("to")
            hit = not peers or any(peer_matches(x, ns_labels, pod_labels, False) for x in peers)
            if hit and port_matches(rule.get("ports"), protocol, port):
                return True
    return False


def ingress_allowed(policies: list[dict[str, Any]], pod: dict[str, str],
                    named: dict[str, int], source: tuple[dict[str, str], dict[str, str]],
                    protocol: str, port: int) -> bool:  # fmt: skip
    """May a pod in a namespace with ``source``'s labels connect to ``pod`` on ``port``?"""
    ns_labels, pod_labels = source
    mine = [p for p in policies if selects(p["spec"]["podSelector"], pod)
            and "Ingress" in p["spec"].get("policyTypes", [])]  # fmt: skip
    if not mine:
        return True  # not isolated
    for policy in mine:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            hit = not peers or any(peer_matches(x, ns_labels, pod_labels, False) for x in peers)
            if hit and port_matches(rule.get("ports"), protocol, port, named):
                return True
    return False


def reachable(policies: list[dict[str, Any]], pod: dict[str, str]) -> set[str]:
    return {peer for peer, ports in PORTS.items()
            if any(egress_allowed(policies, pod, peer, proto, port) for proto, port in ports)}  # fmt: skip


def workloads(resources: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """component -> pod labels of every Deployment and Job."""
    out = {}
    for resource in resources:
        if resource["kind"] in ("Deployment", "Job"):
            labels = resource["spec"]["template"]["metadata"]["labels"]
            out[labels["app.kubernetes.io/component"]] = labels
    return out


def container_ports(resources: list[dict[str, Any]], component: str) -> dict[str, int]:
    """name -> containerPort of the component's pod."""
    for resource in resources:
        if resource["kind"] not in ("Deployment", "Job"):
            continue
        spec = resource["spec"]["template"]
        if spec["metadata"]["labels"]["app.kubernetes.io/component"] == component:
            return {p["name"]: int(p["containerPort"]) for c in spec["spec"]["containers"]
                    for p in c.get("ports", []) if "name" in p}  # fmt: skip
    raise AssertionError(f"no workload {component}")


NEEDS = {
    "executor": {"dns", "kafka", "telemetry"},
    "ingest": {"dns", "kafka", "telemetry"},
    "store": {"dns", "kafka", "postgres", "telemetry"},
    "slurm-gateway": {"dns", "kafka", "slurmrestd", "telemetry"},
    "migrate": {"dns", "postgres"},
    "kafka-acls": {"dns", "kafka"},
    # the web table: reads PostgreSQL (read-only) and `updates`, sends commands
    "web": {"dns", "kafka", "postgres", "telemetry"},
}
# Components that accept connections: from whom, on which container port (by name).
LISTENS = {"web": (INGRESS, "http")}


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_every_pod_is_isolated_both_ways_and_reaches_only_what_it_needs(name: str) -> None:
    resources = rendered(name)
    policies = list(by_kind(resources, "NetworkPolicy").values())
    pods = workloads(resources)
    assert pods, "no workloads"
    for component, labels in pods.items():
        selecting = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert len(selecting) == 1, f"{component}: selected by {len(selecting)} NetworkPolicies"
        spec = selecting[0]["spec"]
        assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"], component
        if component in LISTENS:
            for rule in spec["ingress"]:
                assert rule.get("from"), f"{component}: an ingress rule without peers"
                assert rule.get("ports"), f"{component}: an ingress rule without ports"
        else:
            assert not spec.get("ingress"), f"{component} accepts connections; nothing listens"
        for rule in spec["egress"]:
            assert rule.get("to"), f"{component}: an egress rule without peers allows everywhere"
            assert rule.get("ports"), f"{component}: an egress rule without ports"
            assert all("ipBlock" not in peer for peer in rule["to"]), component
        assert component in NEEDS, f"{component}: add it to NEEDS (and docs/security.md)"
        assert reachable(policies, labels) == NEEDS[component], component


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_the_executor_reaches_kafka_but_not_the_database_or_slurm(name: str) -> None:
    resources = rendered(name)
    policies = list(by_kind(resources, "NetworkPolicy").values())
    executor = workloads(resources)["executor"]
    assert egress_allowed(policies, executor, "kafka", "TCP", 9092)
    assert egress_allowed(policies, executor, "dns", "UDP", 53)
    for peer, proto, port in [("postgres", "TCP", 5432), ("slurmrestd", "TCP", 6820),
                              ("elsewhere", "TCP", 443), ("kafka", "TCP", 5432)]:  # fmt: skip
        assert not egress_allowed(policies, executor, peer, proto, port), (peer, port)
    # only the store, the migration and the (read-only) web table reach PostgreSQL;
    # only the gateway slurmrestd
    pods = workloads(resources)
    assert {c for c, labels in pods.items() if "postgres" in reachable(policies, labels)} == {
        "store",
        "migrate",
        "web",
    }
    assert {c for c, labels in pods.items() if "slurmrestd" in reachable(policies, labels)} == {
        "slurm-gateway"
    }


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_the_kafka_rule_covers_the_configured_bootstrap_port(name: str) -> None:
    resources = rendered(name)
    policies = list(by_kind(resources, "NetworkPolicy").values())
    port = int(configmap(resources)["RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
    for component, labels in workloads(resources).items():
        if "kafka" in NEEDS[component]:
            assert egress_allowed(policies, labels, "kafka", "TCP", port), component


def test_the_evaluator_denies_what_no_rule_allows() -> None:
    """The evaluator itself: an isolated pod, a rule with a port range, an open rule."""
    pod = {"app": "x"}
    policy = {
        "spec": {
            "podSelector": {"matchLabels": {"app": "x"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": KAFKA[0]}}],
                        "ports": [{"protocol": "TCP", "port": 9092, "endPort": 9094}]}],
        }
    }  # fmt: skip
    assert egress_allowed([policy], pod, "kafka", "TCP", 9094)
    assert not egress_allowed([policy], pod, "kafka", "TCP", 9095)
    assert not egress_allowed([policy], pod, "postgres", "TCP", 5432)
    assert egress_allowed([policy], {"app": "other"}, "postgres", "TCP", 5432)  # not selected
    open_rule = {"spec": {**policy["spec"], "egress": [{}]}}
    assert egress_allowed([open_rule], pod, "elsewhere", "TCP", 443)


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_only_the_web_table_accepts_connections_on_its_http_port(name: str) -> None:
    resources = rendered(name)
    policies = list(by_kind(resources, "NetworkPolicy").values())
    pods = workloads(resources)
    web_port = int(configmap(resources)["RUNSTREAM_WEB_PORT"])
    for component, labels in pods.items():
        named = container_ports(resources, component)
        for source in (INGRESS, ELSEWHERE, KAFKA, POSTGRES):
            for port in {web_port, 80, 443, 5432, 9092}:
                allowed = ingress_allowed(policies, labels, named, source, "TCP", port)
                if component in LISTENS and source is LISTENS[component][0]:
                    expected = port == named[LISTENS[component][1]]
                else:
                    expected = False
                assert allowed == expected, (component, source, port)
    # the port the service listens on (ConfigMap) is the container port the policy opens
    assert container_ports(resources, "web")["http"] == web_port
