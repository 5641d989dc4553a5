#!/usr/bin/python3
"""The protos oracle: every message, field and enum value skiff declares in protos/ must match
the upstream Envoy API definitions (from the npm package @grpc/grpc-js-xds, fetched into deps/
by tools/fetch-deps) in name, number, type, label, oneof and proto3 optional."""
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_protogen():
    loader = importlib.machinery.SourceFileLoader("protogen", os.path.join(TOP, "tools", "protogen"))
    spec = importlib.util.spec_from_loader("protogen", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def index(fds, want_files=None):
    msgs, enums = {}, {}

    def walk(prefix, mlist, elist, fname):
        for e in elist:
            enums[f"{prefix}.{e.name}"] = e
        for m in mlist:
            full = f"{prefix}.{m.name}"
            msgs[full] = (m, fname)
            walk(full, m.nested_type, m.enum_type, fname)

    for f in fds.file:
        if want_files is None or f.name in want_files:
            walk(f.package, f.message_type, f.enum_type, f.name)
    return msgs, enums


def field_facts(m, f):
    oneof = ""
    if f.HasField("oneof_index") and not f.proto3_optional:
        oneof = m.oneof_decl[f.oneof_index].name
    return (f.number, f.type, f.type_name, f.label, oneof, f.proto3_optional)


def main():
    deps = subprocess.run([os.path.join(TOP, "tools", "fetch-deps")], check=True,
                          capture_output=True, text=True).stdout.strip()
    ours = [l.strip() for l in open(os.path.join(TOP, "protos", "files.txt"))
            if l.strip() and not l.startswith(("#", "system:", "local:"))]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ours.pb")
        subprocess.run(["protoc", "--include_imports", f"--descriptor_set_out={out}",
                        f"-I{os.path.join(TOP, 'protos')}", "-I/usr/include"] + ours, check=True)
        mine = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read())
    upstream = load_protogen().upstream_descriptors(deps, ours)

    my_msgs, my_enums = index(mine, set(ours))
    up_msgs, up_enums = index(upstream)
    problems = []
    checked = 0
    for name, (m, fname) in sorted(my_msgs.items()):
        if name not in up_msgs:
            problems.append(f"{fname}: message {name} is not in the upstream API")
            continue
        um, ufname = up_msgs[name]
        if ufname != fname:
            problems.append(f"{fname}: message {name} is declared upstream in {ufname}")
        ufields = {f.name: f for f in um.field}
        for f in m.field:
            checked += 1
            if f.name not in ufields:
                problems.append(f"{fname}: {name}.{f.name} is not an upstream field")
                continue
            mine_f, up_f = field_facts(m, f), field_facts(um, ufields[f.name])
            if mine_f != up_f:
                problems.append(f"{fname}: {name}.{f.name}: declared (number, type, type_name, "
                                f"label, oneof, optional) {mine_f}, upstream {up_f}")
    for name, e in sorted(my_enums.items()):
        if name not in up_enums:
            problems.append(f"enum {name} is not in the upstream API")
            continue
        uvals = {v.name: v.number for v in up_enums[name].value}
        for v in e.value:
            checked += 1
            if uvals.get(v.name) != v.number:
                problems.append(f"enum {name}.{v.name} = {v.number}: upstream has {uvals.get(v.name)}")
    for p in problems:
        print(p)
    print(f"protos oracle: {len(my_msgs)} messages, {len(my_enums)} enums, {checked} fields and "
          f"values checked against upstream")
    print(f"{checked - len(problems)} passed, {len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
