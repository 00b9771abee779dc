// gen writes the golden files of core/metadata/testdata with jsoncpp, the JSON
// library Mooncake links. Each value is built with the field names, types and
// shapes of Mooncake's encodeSegmentDesc / addRpcMetaEntry (protocol.md §2,
// §3.1) and serialised with the writers Mooncake uses: Json::FastWriter
// (*.fast.json, trailing newline) and StreamWriterBuilder with indentation ""
// (*.put.json, the HTTP PUT body). See ../README.md for the build command.
#include <json/json.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

std::string dir;

void writeFast(const std::string &name, const Json::Value &v) {
    Json::FastWriter w;
    std::ofstream(dir + "/" + name + ".fast.json", std::ios::binary) << w.write(v);
}

void writePut(const std::string &name, const Json::Value &v) {
    Json::StreamWriterBuilder b;
    b["indentation"] = "";
    std::ofstream(dir + "/" + name + ".put.json", std::ios::binary)
        << Json::writeString(b, v);
}

Json::Value tcpBuffer(const std::string &name, uint64_t addr, uint64_t length) {
    Json::Value b;
    b["name"] = name;
    b["addr"] = static_cast<Json::UInt64>(addr);
    b["length"] = static_cast<Json::UInt64>(length);
    return b;
}

Json::Value keyedBuffer(const std::string &location, uint64_t addr, uint64_t length,
                        const std::vector<uint32_t> &rkeys,
                        const std::vector<uint32_t> &lkeys) {
    Json::Value b = tcpBuffer(location, addr, length);
    Json::Value r(Json::arrayValue), l(Json::arrayValue);
    for (auto k : rkeys) r.append(k);
    for (auto k : lkeys) l.append(k);
    b["rkey"] = r;
    b["lkey"] = l;
    return b;
}

Json::Value device(const std::string &name, uint16_t lid, const std::string &gid) {
    Json::Value d;
    d["name"] = name;
    d["lid"] = lid;
    d["gid"] = gid;
    return d;
}

Json::Value priority(const std::vector<std::string> &preferred,
                     const std::vector<std::string> &available) {
    Json::Value entry(Json::arrayValue), p(Json::arrayValue), a(Json::arrayValue);
    for (auto &s : preferred) p.append(s);
    for (auto &s : available) a.append(s);
    entry.append(p);
    entry.append(a);
    return entry;
}

Json::Value common(const std::string &name, const std::string &protocol, int dataPort) {
    Json::Value s;
    s["name"] = name;
    s["protocol"] = protocol;
    s["tcp_data_port"] = dataPort;
    s["timestamp"] = "2026-08-22 10:00:00.123456";
    return s;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::cerr << "usage: gen OUTDIR\n";
        return 2;
    }
    dir = argv[1];

    // protocol.md §2.3: a HEAD tcp segment with one 2 GiB buddy pool.
    Json::Value tcp = common("127.0.0.1:16001", "tcp", 15234);
    tcp["buffers"].append(tcpBuffer("127.0.0.1:16001", 139716164190208ull, 2147483648ull));
    Json::Value pr = tcp;  // PR (v0.3.8) writes no tcp_proto_version.
    tcp["tcp_proto_version"] = 2;
    writeFast("tcp_head", tcp);
    writePut("tcp_head", tcp);
    writeFast("tcp_pr", pr);

    // The first publish of a tcp segment, before any registration.
    Json::Value empty = common("127.0.0.1:16002", "tcp", 15001);
    empty["buffers"] = Json::Value(Json::arrayValue);
    empty["tcp_proto_version"] = 2;
    writeFast("tcp_empty", empty);

    // rdma: two devices, one key per device, a buffer without keys (HEAD
    // allows it), a priority matrix and HEAD's rdma_server_name.
    Json::Value rdma = common("10.0.0.1:15873", "rdma", 0);
    rdma["tcp_proto_version"] = 1;
    rdma["rdma_server_name"] = "10.0.1.1:15873";
    rdma["devices"].append(device("mlx5_0", 0, "fe:80:00:00:00:00:00:00:0e:42:a1:ff:fe:3b:5c:10"));
    rdma["devices"].append(device("mlx5_1", 7, "00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:01:01"));
    rdma["buffers"].append(keyedBuffer("cpu:0", 0x7f3a40000000ull, 1ull << 30,
                                       {0x1a2b3c, 4294967295u}, {0x1a2b3d, 0}));
    rdma["buffers"].append(keyedBuffer("cuda:0", 0x7f0000200000ull, 64ull << 20,
                                       {11, 22}, {33, 44}));
    rdma["buffers"].append(keyedBuffer("*", 0x10000ull, 4096, {}, {}));
    rdma["priority_matrix"]["cpu:0"] = priority({"mlx5_0"}, {"mlx5_1"});
    rdma["priority_matrix"]["cuda:0"] = priority({"mlx5_1", "mlx5_0"}, {});
    writeFast("rdma", rdma);
    writePut("rdma", rdma);

    // barex: lid 0 and gid "ignore"; a key count taken from the mempool MR
    // set (three keys, two devices); an empty topology, which is null.
    Json::Value barex = common("10.0.0.2:15874", "barex", 0);
    barex["tcp_proto_version"] = 1;
    barex["devices"].append(device("mlx5_0", 0, "ignore"));
    barex["devices"].append(device("mlx5_1", 0, "ignore"));
    barex["buffers"].append(keyedBuffer("cpu:0", 0x7f3a40000000ull, 64ull << 20,
                                        {1, 2, 3}, {4, 5, 6}));
    barex["priority_matrix"] = Json::Value();
    writeFast("barex", barex);

    // String escaping: quotes, backslash, slash, control characters, DEL,
    // and non-ASCII inside and outside the Basic Multilingual Plane.
    const std::string odd = "a\"b\\c/d\x01\x1f\x7f\b\f\n\r\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    Json::Value esc = common(odd, "tcp", 1);
    esc["tcp_proto_version"] = 2;
    esc["buffers"].append(tcpBuffer(odd, 1, 1));
    writeFast("tcp_escapes", esc);

    // protocol.md §3.1: the rpc_meta locator (HEAD writes the port as UInt).
    Json::Value meta;
    meta["ip_or_host_name"] = "10.0.0.5";
    meta["rpc_port"] = static_cast<Json::UInt>(15678);
    writeFast("rpc_meta", meta);
    writePut("rpc_meta", meta);
    return 0;
}
