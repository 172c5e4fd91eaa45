"""Drives a concord agent with python-consul, a published Consul client library, the way an
application would, and checks what comes back. Run by tests/it/compat.rs against a fresh dev
agent: python_consul.py HOST:PORT NODE_NAME. Exits non-zero, naming the step, on the first
difference."""

import base64
import sys
import threading
import time

import consul


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def eventually(what, probe, limit=10.0):
    deadline = time.monotonic() + limit
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    node = sys.argv[2]
    c = consul.Consul(host=host, port=int(port))
    step = "status"
    try:
        leader = c.status.leader()
        check(leader and ":" in leader, "a leader: %r" % leader)
        check(len(c.status.peers()) == 1, "one peer")

        step = "kv"
        check(c.kv.put("compat/a", "one") is True, "put")
        index, entry = c.kv.get("compat/a")
        check(entry["Value"] == b"one" and int(index) > 0, "get: %r" % (entry,))
        check(c.kv.put("compat/a", "two", cas=entry["ModifyIndex"]) is True, "cas put")
        check(c.kv.put("compat/a", "three", cas=entry["ModifyIndex"]) is False, "stale cas")
        check(c.kv.put("compat/b/c", "x", flags=42) is True, "put with flags")
        index, entries = c.kv.get("compat/", recurse=True)
        check([e["Key"] for e in entries] == ["compat/a", "compat/b/c"], "recurse: %r" % entries)
        check(entries[1]["Flags"] == 42, "flags")
        index, keys = c.kv.get("compat/", keys=True, separator="/")
        check(keys == ["compat/a", "compat/b/"], "keys: %r" % keys)
        # A blocking read returns when the key changes.
        index, entry = c.kv.get("compat/a")
        woke = {}

        def block():
            woke["result"] = c.kv.get("compat/a", index=index, wait="10s")

        waiter = threading.Thread(target=block)
        waiter.start()
        time.sleep(0.2)
        c.kv.put("compat/a", "four")
        waiter.join(15)
        check(not waiter.is_alive(), "blocking read woke")
        new_index, changed = woke["result"]
        check(int(new_index) > int(index) and changed["Value"] == b"four", "blocking read: %r" % (changed,))
        check(c.kv.delete("compat/", recurse=True) is True, "recursive delete")
        check(c.kv.get("compat/a")[1] is None, "deleted")

        step = "txn"
        value = base64.b64encode(b"in-txn").decode()
        result = c.txn.put([
            {"KV": {"Verb": "set", "Key": "compat/txn", "Value": value}},
            {"KV": {"Verb": "get", "Key": "compat/txn"}},
        ])
        check(result["Errors"] is None, "txn errors: %r" % result)
        check(base64.b64decode(result["Results"][1]["KV"]["Value"]) == b"in-txn", "txn get")

        step = "agent"
        me = c.agent.self()
        check(me["Config"]["NodeName"] == node, "self: %r" % me["Config"].get("NodeName"))
        check(c.agent.service.register(
            "web", service_id="web1", port=8080, tags=["v1"], check=consul.Check.ttl("10s")
        ) is True, "service register")
        services = c.agent.services()
        check("web1" in services, "agent services")
        check("consul" not in services, "the server's own service is the catalog's: %r" % services)
        check(isinstance(me.get("xDS"), dict), "self spells xDS as Consul does: %r" % list(me))
        # Go clients send durations as nanoseconds.
        check(c.http.put(consul.base.CB.bool(), "/v1/agent/check/register",
                         data='{"Name": "nanos", "TTL": 30000000000}') is True, "integer TTL")
        check(c.agent.checks()["nanos"]["Status"] == "critical", "integer TTL check registered")
        # A critical node check would fail every service on the node.
        check(c.agent.check.deregister("nanos") is True, "check deregister")
        check("service:web1" in c.agent.checks(), "agent checks")
        check(c.agent.check.ttl_pass("service:web1", notes="fine") is True, "ttl pass")
        members = c.agent.members()
        check([m["Name"] for m in members] == [node], "members: %r" % members)
        check(c.agent.maintenance(True, "compat") is True, "maintenance on")
        check(c.agent.maintenance(False) is True, "maintenance off")

        step = "health"
        passing = eventually(
            "web passing",
            lambda: [e for e in c.health.service("web", passing=True)[1]
                     if e["Service"]["ID"] == "web1"],
        )
        check(passing[0]["Service"]["Tags"] == ["v1"], "health service: %r" % passing)
        index, checks = c.health.checks("web")
        check(any(x["CheckID"] == "service:web1" for x in checks), "health checks")
        index, states = c.health.state("passing")
        check(any(x["CheckID"] == "serfHealth" for x in states), "health state")
        index, on_node = c.health.node(node)
        check(len(on_node) >= 2, "health node: %r" % on_node)

        step = "query"
        # python-consul always sends a name_prefix_match template, so queries run by name.
        created = c.query.create("web", name="compat-q", tags=["v1"], ttl="10s")
        query_id = created["ID"]
        listed = c.query.list()
        check([q["ID"] for q in listed] == [query_id], "query list: %r" % listed)
        got = c.query.get(query_id)
        check(got[0]["Service"]["Tags"] == ["v1"] and got[0]["DNS"]["TTL"] == "10s",
              "query get: %r" % got)
        executed = c.query.execute("compat-q")
        check([e["Service"]["ID"] for e in executed["Nodes"]] == ["web1"],
              "query execute: %r" % executed)
        explained = c.query.explain("compat-q-more")
        check(explained["Query"]["Service"]["Service"] == "web", "query explain: %r" % explained)
        c.query.update(query_id, "web", name="compat-q", tags=["v2"])
        check(c.query.execute("compat-q")["Nodes"] == [], "updated query: no v2 instance")
        check(c.query.delete(query_id) is True, "query delete")
        check(c.query.list() == [], "query deleted")

        step = "catalog"
        check(c.catalog.register("ext", "10.0.0.9", service={"Service": "ext-svc", "Port": 80})
              is True, "catalog register")
        check(c.catalog.datacenters() == ["dc1"], "datacenters")
        index, nodes = c.catalog.nodes()
        check(sorted(n["Node"] for n in nodes) == sorted([node, "ext"]), "nodes: %r" % nodes)
        index, services = c.catalog.services()
        check("ext-svc" in services and "web" in services, "services: %r" % services)
        index, ext = c.catalog.node("ext")
        check(ext["Node"]["Address"] == "10.0.0.9", "catalog node: %r" % ext)
        index, instances = c.catalog.service("ext-svc")
        check(instances[0]["ServicePort"] == 80, "catalog service: %r" % instances)
        check(c.catalog.deregister("ext") is True, "catalog deregister")
        check(c.catalog.node("ext")[1] is None, "deregistered node")

        step = "session"
        session = c.session.create(name="compat", behavior="delete", ttl=30)
        index, info = c.session.info(session)
        check(info["Name"] == "compat" and info["Behavior"] == "delete", "session info: %r" % info)
        check(c.kv.put("compat/lock", "me", acquire=session) is True, "acquire")
        check(c.kv.get("compat/lock")[1]["Session"] == session, "lock holder")
        index, listed = c.session.list()
        check(any(s["ID"] == session for s in listed), "session list")
        index, on_node = c.session.node(node)
        check(any(s["ID"] == session for s in on_node), "session node")
        renewed = c.session.renew(session)
        check(renewed["ID"] == session, "renew: %r" % renewed)
        check(c.session.destroy(session) is True, "destroy")
        check(c.kv.get("compat/lock")[1] is None, "a deleting session's lock goes with it")

        step = "event"
        fired = c.event.fire("deploy", body="v2")
        check(fired["Name"] == "deploy", "fire: %r" % fired)
        events = eventually("the event listed",
                            lambda: c.event.list(name="deploy")[1])
        # The library decodes the payload itself.
        check(events[0]["Payload"] == b"v2", "event payload: %r" % events)

        step = "coordinate"
        datacenters = c.coordinate.datacenters()
        check(datacenters[0]["Datacenter"] == "dc1", "coordinate datacenters: %r" % datacenters)
        index, coordinates = c.coordinate.nodes()
        check(isinstance(coordinates, list), "coordinate nodes")

        step = "operator"
        raft = c.operator.raft_config()
        check(len(raft["Servers"]) == 1 and raft["Servers"][0]["Leader"], "raft: %r" % raft)

        # What python-consul has no wrapper for, it reaches through its own HTTP client, as
        # applications do.
        step = "config"
        response = c.http.put(
            consul.base.CB.bool(), "/v1/config",
            data='{"Kind": "service-defaults", "Name": "web", "Protocol": "http"}')
        check(response is True, "config write")
        entry = c.http.get(consul.base.CB.json(), "/v1/config/service-defaults/web")
        check(entry["Protocol"] == "http", "config read: %r" % entry)

        step = "connect"
        roots = c.http.get(consul.base.CB.json(), "/v1/connect/ca/roots")
        check(roots["Roots"][0]["Active"] is True, "ca roots")
        leaf = c.http.get(consul.base.CB.json(), "/v1/agent/connect/ca/leaf/web")
        check(leaf["Service"] == "web" and "BEGIN CERTIFICATE" in leaf["CertPEM"], "leaf")

        step = "snapshot"
        snapshot = c.http.get(lambda response: response, "/v1/snapshot")
        check(snapshot.code == 200 and len(snapshot.body) > 0, "snapshot save")

        step = "deregister"
        check(c.agent.service.deregister("web1") is True, "service deregister")
        check("web1" not in c.agent.services(), "deregistered")
    except Exception as error:  # noqa: BLE001 - the step and the error are the report
        print("python-consul step %s failed: %s: %s" % (step, type(error).__name__, error))
        return 1
    print("python-consul: every step passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
