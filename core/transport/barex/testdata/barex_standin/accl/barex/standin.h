// STAND-IN declarations of the accl-barex API, inferred from its public
// call sites (Mooncake's barex transport, FlagCX's barex adaptor;
// transports.md §5.1). They are NOT the SDK and are not from it: they
// exist only so that the tests can check that shim/mc_barex_shim.cpp is
// well-formed C++ for the API as pymooncake understands it. Compiling
// against them proves nothing about the real library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

struct ibv_mr {
	uint32_t lkey;
	uint32_t rkey;
};

namespace accl {
namespace barex {

enum BarexResult { BAREX_SUCCESS = 0, BAREX_ERR_QUEUE_FULL = 1, BAREX_ERR_OTHER = 2 };
extern const std::map<BarexResult, const char *> BarexResultStrings;

enum device_type { CPU = 0, GPU = 1 };
enum TimerTick { TIMER_3S = 3 };

class Status {
      public:
	bool IsOk() const;
	std::string ErrMsg() const;
};

using DoneCallback = std::function<void(Status)>;

struct x_msg_header {
	uint64_t raw;
};

struct memp_t {
	char *buf;
	size_t buf_len;
	std::map<int, ibv_mr *> mrs;
};

struct rw_memp_t {
	struct {
		uint64_t addr;
		uint32_t length;
		uint32_t lkey;
	} sg;
	struct {
		device_type d_type;
		int device_id;
	} data;
	uint64_t r_addr;
	uint32_t r_key;
	uint64_t r_ttl_ms;
};

class XDevice {
      public:
	std::string GetName() const;
	int GetId() const;
};

class XDeviceManager {
      public:
	static BarexResult Singleton(XDeviceManager *&out);
	std::vector<XDevice *> AllDevices();
};

class XContext;

class XChannel {
      public:
	bool IsActive();
	int GetPeerNicId();
	int GetLocalNicId();
	XContext *GetContext();
	BarexResult WriteBatch(std::shared_ptr<std::vector<rw_memp_t>> batch, DoneCallback cb, bool done_inline);
	BarexResult ReadBatch(std::shared_ptr<std::vector<rw_memp_t>> batch, DoneCallback cb, bool done_inline);
	void Destroy();
};

class XChannelCallback {
      public:
	virtual ~XChannelCallback() = default;
	virtual void OnRecvCall(XChannel *channel, char *buf, size_t len, x_msg_header header) = 0;
};

class XSimpleMempool {
      public:
	static BarexResult NewInstance(XSimpleMempool *&out, const std::string &name, std::vector<XDevice *> devices);
	BarexResult RegUserMr(memp_t &mem, void *addr, size_t len, device_type type);
	BarexResult RegUserMr(memp_t &mem, void *addr, size_t len, device_type type, int device_id);
	BarexResult DeregUserMr(void *addr, device_type type);
	void Shutdown();
	void WaitStop();
};

class XThreadpool {
      public:
	static BarexResult NewInstance(XThreadpool *&out, int threads, const std::string &name);
	void Shutdown();
	void WaitStop();
};

struct ContextConfig {
	int reserved;
};

class XConfigUtil {
      public:
	static ContextConfig DefaultContextConfig();
};

class XContext {
      public:
	static BarexResult NewInstance(XContext *&out, ContextConfig cfg, XChannelCallback *cb, XDevice *dev,
				       XSimpleMempool *mempool, XThreadpool *pool);
	void Start();
	void Shutdown();
	void WaitStop();
	XDevice *GetXDevice();
	virtual ~XContext();
};

class XListener {
      public:
	static BarexResult NewInstance(XListener *&out, int workers, int port, TimerTick timer,
				       std::vector<XContext *> contexts);
	BarexResult Listen();
	void Shutdown();
	void WaitStop();
};

class XConnector {
      public:
	static BarexResult NewInstance(XConnector *&out, int workers, TimerTick timer, std::vector<XContext *> contexts);
	BarexResult Connect(const std::string &ip, int port, std::function<void(XChannel *, Status)> cb);
	BarexResult CloseChannel(XChannel *channel, DoneCallback cb);
	void Shutdown();
	void WaitStop();
};

} // namespace barex
} // namespace accl
