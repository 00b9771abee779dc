// mc_barex_shim.cpp: pymooncake's shim over Alibaba's accl-barex, the C ABI
// of mc_barex_shim.h (version 1) over barex's C++ API.
//
// Built only where the barex SDK exists (make barex-shim ACCL_ROOT=...),
// with the same compiler and C++ ABI as libaccl_barex, which it links with
// a normal DT_NEEDED; pymooncake dlopens this library at run time and
// never links barex itself.
//
// The barex API is used as Mooncake's barex transport and FlagCX's barex
// adaptor use it (transports.md §5.1); what those call sites do not settle
// is marked ASSUMPTION below and listed in docs/barex.md. This file has
// been compiled only against stand-in declarations of that API
// (testdata/barex_standin), never against the SDK, and has never run.
//
// Design (transports.md §5.12):
//  - One server and one client XContext per device, each with its own
//    callback object that this shim owns and deletes after the context
//    (Mooncake leaked them, P3). One XConnector per client context, so a
//    channel is opened from exactly the device the caller asks for (B4).
//  - The listener probes ports by listening: the first XListener whose
//    Listen succeeds keeps its port (no probe-then-bind race, B2).
//  - Channels are integer handles (generation<<32 | slot) into a table; no
//    barex pointer crosses the ABI.
//  - Every barex callback ends here: it queues {cookie, status} and writes
//    the eventfd. The queue, the table and the eventfd live in a
//    shared_ptr that every callback holds, so a callback that comes after
//    mcbx_close_engine gave up waiting touches nothing freed.
//  - A post yields exactly one completion or none, even if barex both
//    returned an error and ran the callback (B8).
//  - No function-level static state, no C++ exception crosses the C ABI.

#include <accl/barex/barex.h>
#include <accl/barex/barex_types.h>
#include <accl/barex/xchannel.h>
#include <accl/barex/xconfig_util.h>
#include <accl/barex/xconnector.h>
#include <accl/barex/xcontext.h>
#include <accl/barex/xdevice_manager.h>
#include <accl/barex/xlistener.h>
#include <accl/barex/xsimple_mempool.h>
#include <accl/barex/xthreadpool.h>
#include <accl/barex/xtimer.h>

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "mc_barex_shim.h"

namespace {

using accl::barex::BarexResult;
using accl::barex::ContextConfig;
using accl::barex::memp_t;
using accl::barex::rw_memp_t;
using accl::barex::Status;
using accl::barex::x_msg_header;
using accl::barex::XChannel;
using accl::barex::XChannelCallback;
using accl::barex::XConfigUtil;
using accl::barex::XConnector;
using accl::barex::XContext;
using accl::barex::XDevice;
using accl::barex::XDeviceManager;
using accl::barex::XListener;
using accl::barex::XSimpleMempool;
using accl::barex::XThreadpool;

using Clock = std::chrono::steady_clock;

thread_local std::string tl_err;

int fail(int rc, const std::string &msg) {
	tl_err = msg;
	return rc;
}

std::string result_text(BarexResult r) {
	auto it = accl::barex::BarexResultStrings.find(r);
	std::string name = it == accl::barex::BarexResultStrings.end() ? "unknown" : it->second;
	return name + " (" + std::to_string(static_cast<int>(r)) + ")";
}

bool ok(BarexResult r) { return r == accl::barex::BAREX_SUCCESS; }

// NoRecv is the context callback: this transport never receives two-sided
// messages. One per context, owned by the shim.
class NoRecv : public XChannelCallback {
      public:
	void OnRecvCall(XChannel *, char *, size_t, x_msg_header) override {}
};

// Slot is one channel of the table.
struct Slot {
	uint32_t gen = 0;
	bool used = false;
	bool closing = false;
	XChannel *ch = nullptr;
	XConnector *connector = nullptr; // the one that opened it
	int32_t local_nic = -1, peer_nic = -1;
	int64_t inflight = 0; // batches posted and not completed
};

// Shared is what callbacks may touch. Every callback holds a reference, so
// it outlives the engine when barex calls back late.
struct Shared {
	std::mutex mu;
	std::condition_variable cv; // inflight changes and close callbacks
	std::vector<Slot> slots;    // guarded by mu
	std::deque<mcbx_done> done; // guarded by mu
	int efd = -1;

	~Shared() {
		if (efd >= 0)
			close(efd);
	}

	void push(uint64_t cookie, int32_t status) {
		{
			std::lock_guard<std::mutex> lk(mu);
			done.push_back(mcbx_done{cookie, status, 0});
		}
		uint64_t one = 1;
		ssize_t n = write(efd, &one, sizeof one);
		(void)n; // EAGAIN only when the counter is about to overflow
	}

	Slot *find(mcbx_chan ch) { // mu held
		uint32_t idx = static_cast<uint32_t>(ch), gen = static_cast<uint32_t>(ch >> 32);
		if (ch == 0 || idx >= slots.size())
			return nullptr;
		Slot &s = slots[idx];
		return s.used && s.gen == gen ? &s : nullptr;
	}
};

// PostState makes a post yield exactly one completion or none, whatever
// order barex's return and callback come in.
struct PostState {
	std::mutex mu;
	enum { kPosting, kPosted, kRefused, kEarly } state = kPosting;
	int32_t status = 0;
};

struct Device {
	XDevice *dev = nullptr;
	std::string name;
	int32_t id = -1;
	XContext *server = nullptr, *client = nullptr;
	std::unique_ptr<NoRecv> server_cb, client_cb;
	XConnector *connector = nullptr;
	bool ok = false;
};

int32_t status_code(const Status &s) { return s.IsOk() ? MCBX_OK : MCBX_EIO; }

void stop_context(XContext *&ctx) {
	if (!ctx)
		return;
	ctx->Shutdown();
	ctx->WaitStop();
	delete ctx;
	ctx = nullptr;
}

template <typename T> void stop(T *&x) {
	if (!x)
		return;
	x->Shutdown();
	x->WaitStop();
	delete x;
	x = nullptr;
}

} // namespace

struct mcbx_engine {
	std::shared_ptr<Shared> sh = std::make_shared<Shared>();
	std::atomic<bool> closing{false};
	XSimpleMempool *mempool = nullptr;
	XThreadpool *server_pool = nullptr, *client_pool = nullptr;
	std::vector<Device> devs;
	XListener *listener = nullptr;
	int32_t port = 0;
	int connector_workers = 2;
	std::mutex mr_mu;
	std::map<uint64_t, int32_t> mrs; // start address -> memory type; guarded by mr_mu

	Device *device(int32_t nic) {
		for (auto &d : devs)
			if (d.id == nic && d.ok)
				return &d;
		return nullptr;
	}
	int close_channel(mcbx_chan ch, Clock::time_point deadline);
	void teardown(Clock::time_point deadline);
};

extern "C" {

int mcbx_abi_version(void) { return MCBX_ABI_VERSION; }

const char *mcbx_strerror(int rc) {
	switch (rc) {
	case MCBX_OK: return "success";
	case MCBX_EINVAL: return "invalid argument";
	case MCBX_ENOMEM: return "out of memory";
	case MCBX_ENODEV: return "no barex device";
	case MCBX_EADDRINUSE: return "no free listen port";
	case MCBX_ECONNECT: return "channel setup failed";
	case MCBX_ETIMEDOUT: return "timed out";
	case MCBX_EBADCHAN: return "bad channel handle";
	case MCBX_EINACTIVE: return "channel inactive";
	case MCBX_ENOTREG: return "memory not registered";
	case MCBX_EAGAIN: return "queue full";
	case MCBX_ECLOSED: return "engine closing";
	case MCBX_EIO: return "barex i/o error";
	case MCBX_EACCESS: return "key or range rejected";
	}
	return "unknown barex shim error";
}

int mcbx_last_error(char *buf, size_t cap) {
	if (buf && cap > 0) {
		size_t k = std::min(tl_err.size(), cap - 1);
		memcpy(buf, tl_err.data(), k);
		buf[k] = 0;
	}
	return static_cast<int>(tl_err.size());
}

} // extern "C"

namespace {

// open_engine is mcbx_open without the exception guard.
int open_engine(const mcbx_config *cfg, mcbx_engine *e) {
	int server_threads = cfg->server_threads > 0 ? cfg->server_threads : 10;
	int client_threads = cfg->client_threads > 0 ? cfg->client_threads : 10;
	int listener_workers = cfg->listener_workers > 0 ? cfg->listener_workers : 2;
	e->connector_workers = cfg->connector_workers > 0 ? cfg->connector_workers : 2;
	// ASSUMPTION: barex reads ACCL_USE_NICS when the device manager is first
	// created, so it only takes effect for the first engine of a process.
	if (cfg->use_nics && setenv("ACCL_USE_NICS", cfg->use_nics, 1) != 0)
		return fail(MCBX_EINVAL, "setenv ACCL_USE_NICS failed");

	e->sh->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (e->sh->efd < 0)
		return fail(MCBX_EIO, std::string("eventfd: ") + strerror(errno));

	XDeviceManager *manager = nullptr;
	BarexResult r = XDeviceManager::Singleton(manager);
	if (!ok(r) || !manager)
		return fail(MCBX_ENODEV, "XDeviceManager::Singleton: " + result_text(r));
	std::vector<XDevice *> all = manager->AllDevices();
	if (all.empty())
		return fail(MCBX_ENODEV, "barex lists no device");
	r = XSimpleMempool::NewInstance(e->mempool, "pymooncake-barex-mempool", all);
	if (!ok(r))
		return fail(MCBX_EIO, "XSimpleMempool::NewInstance: " + result_text(r));
	r = XThreadpool::NewInstance(e->server_pool, server_threads, "pymooncake-barex-server");
	if (!ok(r))
		return fail(MCBX_EIO, "XThreadpool::NewInstance (server): " + result_text(r));
	r = XThreadpool::NewInstance(e->client_pool, client_threads, "pymooncake-barex-client");
	if (!ok(r))
		return fail(MCBX_EIO, "XThreadpool::NewInstance (client): " + result_text(r));

	std::vector<XContext *> servers;
	e->devs.resize(all.size());
	for (size_t i = 0; i < all.size(); i++) {
		Device &d = e->devs[i];
		d.dev = all[i];
		d.name = all[i]->GetName();
		d.id = all[i]->GetId();
		ContextConfig sc = XConfigUtil::DefaultContextConfig();
		d.server_cb = std::make_unique<NoRecv>();
		if (!ok(XContext::NewInstance(d.server, sc, d.server_cb.get(), d.dev, e->mempool, e->server_pool))) {
			d.server = nullptr;
			continue;
		}
		d.server->Start();
		ContextConfig cc = XConfigUtil::DefaultContextConfig();
		d.client_cb = std::make_unique<NoRecv>();
		if (!ok(XContext::NewInstance(d.client, cc, d.client_cb.get(), d.dev, e->mempool, e->client_pool))) {
			d.client = nullptr;
			continue;
		}
		d.client->Start();
		std::vector<XContext *> one{d.client};
		if (!ok(XConnector::NewInstance(d.connector, e->connector_workers, accl::barex::TIMER_3S, one))) {
			d.connector = nullptr;
			continue;
		}
		d.ok = true;
		servers.push_back(d.server);
	}
	if (servers.empty())
		return fail(MCBX_ENODEV, "no barex device started its contexts");

	int lo = cfg->port_min, hi = cfg->port_max, tries = 500;
	if (cfg->listen_port > 0)
		lo = hi = cfg->listen_port, tries = 1;
	if (lo < 1 || hi > 65535 || lo > hi)
		return fail(MCBX_EINVAL, "bad port range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
	std::mt19937 rng{std::random_device{}()};
	std::uniform_int_distribution<int> pick(lo, hi);
	std::string last;
	for (int i = 0; i < tries; i++) {
		int port = pick(rng);
		XListener *l = nullptr;
		r = XListener::NewInstance(l, listener_workers, port, accl::barex::TIMER_3S, servers);
		if (ok(r) && l && ok(r = l->Listen())) {
			e->listener = l;
			e->port = port;
			return MCBX_OK;
		}
		last = result_text(r);
		stop(l);
	}
	return fail(MCBX_EADDRINUSE, "no port of [" + std::to_string(lo) + ", " + std::to_string(hi) +
					 "] could be listened on; last: " + last);
}

} // namespace

// close_channel closes one channel: wait for its batches, then CloseChannel
// and wait for barex's close callback, which destroys it.
int mcbx_engine::close_channel(mcbx_chan ch, Clock::time_point deadline) {
	std::unique_lock<std::mutex> lk(sh->mu);
	Slot *s = sh->find(ch);
	if (!s || s->closing)
		return fail(MCBX_EBADCHAN, "bad channel handle");
	s->closing = true;
	uint32_t idx = static_cast<uint32_t>(ch), gen = static_cast<uint32_t>(ch >> 32);
	auto same = [&] { return sh->slots[idx].gen == gen && sh->slots[idx].used; };
	bool drained = sh->cv.wait_until(lk, deadline, [&] { return !same() || sh->slots[idx].inflight == 0; });
	XChannel *xch = sh->slots[idx].ch;
	XConnector *conn = sh->slots[idx].connector;
	lk.unlock();

	auto closed = std::make_shared<std::atomic<bool>>(false);
	std::shared_ptr<Shared> keep = sh;
	BarexResult r = conn->CloseChannel(xch, [keep, closed, xch](Status) {
		xch->Destroy();
		closed->store(true);
		std::lock_guard<std::mutex> g(keep->mu);
		keep->cv.notify_all();
	});
	lk.lock();
	bool done_close = ok(r) && sh->cv.wait_until(lk, deadline, [&] { return closed->load(); });
	// The handle is released whatever happened; late completions of its
	// batches still arrive, carrying their cookies.
	sh->slots[idx].used = false;
	sh->slots[idx].ch = nullptr;
	sh->slots[idx].inflight = 0;
	lk.unlock();
	if (!ok(r))
		return fail(MCBX_EIO, "CloseChannel: " + result_text(r));
	if (!drained || !done_close)
		return fail(MCBX_ETIMEDOUT, "channel close did not finish before the deadline");
	return MCBX_OK;
}

// teardown runs the safe order of transports.md §5.9.
void mcbx_engine::teardown(Clock::time_point deadline) {
	closing.store(true);
	std::vector<mcbx_chan> open;
	{
		std::lock_guard<std::mutex> lk(sh->mu);
		for (size_t i = 0; i < sh->slots.size(); i++)
			if (sh->slots[i].used && !sh->slots[i].closing)
				open.push_back(static_cast<uint64_t>(sh->slots[i].gen) << 32 | i);
	}
	for (mcbx_chan ch : open)
		close_channel(ch, deadline);
	for (auto &d : devs)
		stop(d.connector);
	stop(listener);
	for (auto &d : devs) {
		stop_context(d.server);
		stop_context(d.client);
		d.server_cb.reset(); // after its context (P3)
		d.client_cb.reset();
	}
	stop(server_pool);
	stop(client_pool);
	if (mempool) {
		std::lock_guard<std::mutex> lk(mr_mu);
		for (auto &m : mrs)
			mempool->DeregUserMr(reinterpret_cast<void *>(m.first),
					     m.second == MCBX_MEM_GPU ? accl::barex::GPU : accl::barex::CPU);
		mrs.clear();
	}
	stop(mempool);
}

#define GUARD_BEGIN try {
#define GUARD_END                                                                                                      \
	}                                                                                                              \
	catch (const std::exception &ex) {                                                                             \
		return fail(MCBX_EIO, std::string("c++ exception: ") + ex.what());                                     \
	}                                                                                                              \
	catch (...) {                                                                                                  \
		return fail(MCBX_EIO, "unknown c++ exception");                                                        \
	}

extern "C" {

int mcbx_open(const mcbx_config *cfg, mcbx_engine **out, int32_t *bound_port) {
	GUARD_BEGIN
	if (!cfg || !out || !bound_port || cfg->struct_size < sizeof(mcbx_config))
		return fail(MCBX_EINVAL, "bad mcbx_open arguments");
	auto e = std::make_unique<mcbx_engine>();
	int rc = open_engine(cfg, e.get());
	if (rc != MCBX_OK) {
		std::string why = tl_err;
		e->teardown(Clock::now());
		return fail(rc, why);
	}
	*bound_port = e->port;
	*out = e.release();
	return MCBX_OK;
	GUARD_END
}

int mcbx_devices(mcbx_engine *e, mcbx_device *out, int32_t cap) {
	GUARD_BEGIN
	if (!e || (cap > 0 && !out))
		return fail(MCBX_EINVAL, "bad mcbx_devices arguments");
	for (int32_t i = 0; i < static_cast<int32_t>(e->devs.size()) && i < cap; i++) {
		memset(&out[i], 0, sizeof out[i]);
		snprintf(out[i].name, sizeof out[i].name, "%s", e->devs[i].name.c_str());
		out[i].barex_id = e->devs[i].id;
		out[i].ctx_ok = e->devs[i].ok ? 1 : 0;
	}
	return static_cast<int>(e->devs.size());
	GUARD_END
}

int mcbx_reg_mr(mcbx_engine *e, uint64_t addr, uint64_t len, int32_t mem_type, int32_t gpu_id, mcbx_key *keys,
		int32_t cap, int32_t *n) {
	GUARD_BEGIN
	if (!e || !addr || !len || !keys || !n || (mem_type != MCBX_MEM_CPU && mem_type != MCBX_MEM_GPU))
		return fail(MCBX_EINVAL, "bad mcbx_reg_mr arguments");
	if (e->closing.load())
		return fail(MCBX_ECLOSED, "engine closing");
	auto dtype = mem_type == MCBX_MEM_GPU ? accl::barex::GPU : accl::barex::CPU;
	memp_t mem;
#ifdef MCBX_REGMR_WITH_DEVICE
	// Newer barex takes the GPU ordinal (as FlagCX's adaptor passes it).
	BarexResult r = e->mempool->RegUserMr(mem, reinterpret_cast<void *>(addr), len, dtype, gpu_id);
#else
	(void)gpu_id;
	BarexResult r = e->mempool->RegUserMr(mem, reinterpret_cast<void *>(addr), len, dtype);
#endif
	if (!ok(r))
		return fail(MCBX_EIO, "RegUserMr: " + result_text(r));
	// ASSUMPTION: mem.mrs maps barex NIC ids to ibv_mr*, as both call sites
	// read it.
	int32_t k = 0;
	for (auto &kv : mem.mrs) {
		if (!kv.second)
			continue;
		if (k == cap) {
			e->mempool->DeregUserMr(reinterpret_cast<void *>(addr), dtype);
			return fail(MCBX_EINVAL, "more nics than key slots");
		}
		keys[k++] = mcbx_key{static_cast<int32_t>(kv.first), kv.second->lkey, kv.second->rkey};
	}
	std::lock_guard<std::mutex> lk(e->mr_mu);
	e->mrs[addr] = mem_type;
	*n = k;
	return MCBX_OK;
	GUARD_END
}

int mcbx_dereg_mr(mcbx_engine *e, uint64_t addr, int32_t mem_type) {
	GUARD_BEGIN
	if (!e)
		return fail(MCBX_EINVAL, "no engine");
	{
		std::lock_guard<std::mutex> lk(e->mr_mu);
		auto it = e->mrs.find(addr);
		if (it == e->mrs.end())
			return fail(MCBX_ENOTREG, "no registration starts at that address");
		if (it->second != mem_type)
			return fail(MCBX_EINVAL, "registered as another memory type");
		e->mrs.erase(it);
	}
	BarexResult r = e->mempool->DeregUserMr(reinterpret_cast<void *>(addr),
						mem_type == MCBX_MEM_GPU ? accl::barex::GPU : accl::barex::CPU);
	if (!ok(r))
		return fail(MCBX_EIO, "DeregUserMr: " + result_text(r));
	return MCBX_OK;
	GUARD_END
}

int mcbx_connect(mcbx_engine *e, const char *host, int32_t port, int32_t local_nic, int32_t timeout_ms,
		 mcbx_chan *ch, int32_t *local_nic_out, int32_t *peer_nic_out) {
	GUARD_BEGIN
	if (!e || !host || !*host || port <= 0 || port > 65535 || !ch || !local_nic_out || !peer_nic_out ||
	    timeout_ms <= 0)
		return fail(MCBX_EINVAL, "bad mcbx_connect arguments");
	if (e->closing.load())
		return fail(MCBX_ECLOSED, "engine closing");
	Device *d = nullptr;
	if (local_nic >= 0) {
		d = e->device(local_nic);
	} else {
		for (auto &x : e->devs)
			if (x.ok && !d)
				d = &x;
	}
	if (!d)
		return fail(MCBX_ENODEV, "no usable nic " + std::to_string(local_nic));

	struct Wait {
		std::mutex mu;
		std::condition_variable cv;
		bool done = false, abandoned = false;
		XChannel *ch = nullptr;
		std::string err;
	};
	auto w = std::make_shared<Wait>();
	XConnector *conn = d->connector;
	BarexResult r = conn->Connect(std::string(host), port, [w, conn](XChannel *xch, Status s) {
		std::unique_lock<std::mutex> lk(w->mu);
		if (w->abandoned || w->done) {
			// Nobody waits (timed out, or the call itself failed): a
			// channel that still came up is closed, never leaked.
			lk.unlock();
			if (s.IsOk() && xch)
				conn->CloseChannel(xch, [xch](Status) { xch->Destroy(); });
			return;
		}
		w->done = true;
		if (s.IsOk() && xch)
			w->ch = xch;
		else
			w->err = s.ErrMsg();
		w->cv.notify_all();
	});
	std::unique_lock<std::mutex> lk(w->mu);
	if (!ok(r)) {
		// B8: barex may also run the callback; it then finds done set.
		w->done = true;
		XChannel *late = w->ch;
		lk.unlock();
		if (late)
			conn->CloseChannel(late, [late](Status) { late->Destroy(); });
		return fail(MCBX_ECONNECT, "Connect " + std::string(host) + ":" + std::to_string(port) + ": " +
						   result_text(r));
	}
	if (!w->cv.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return w->done; })) {
		w->abandoned = true;
		return fail(MCBX_ETIMEDOUT, "Connect " + std::string(host) + ":" + std::to_string(port) +
						    " did not finish in " + std::to_string(timeout_ms) + " ms");
	}
	XChannel *xch = w->ch;
	std::string err = w->err;
	lk.unlock();
	if (!xch)
		return fail(MCBX_ECONNECT, "Connect " + std::string(host) + ":" + std::to_string(port) + ": " + err);

	std::lock_guard<std::mutex> g(e->sh->mu);
	auto &slots = e->sh->slots;
	size_t idx = 0;
	while (idx < slots.size() && slots[idx].used)
		idx++;
	if (idx == slots.size())
		slots.emplace_back();
	Slot &s = slots[idx];
	s.gen = s.gen + 1 == 0 ? 1 : s.gen + 1;
	s.used = true;
	s.closing = false;
	s.ch = xch;
	s.connector = conn;
	s.local_nic = xch->GetContext()->GetXDevice()->GetId();
	s.peer_nic = xch->GetPeerNicId();
	s.inflight = 0;
	*ch = static_cast<uint64_t>(s.gen) << 32 | idx;
	*local_nic_out = s.local_nic;
	*peer_nic_out = s.peer_nic;
	return MCBX_OK;
	GUARD_END
}

int mcbx_chan_active(mcbx_engine *e, mcbx_chan ch) {
	GUARD_BEGIN
	if (!e)
		return fail(MCBX_EINVAL, "no engine");
	std::lock_guard<std::mutex> lk(e->sh->mu);
	Slot *s = e->sh->find(ch);
	if (!s)
		return fail(MCBX_EBADCHAN, "bad channel handle");
	return !s->closing && s->ch->IsActive() ? 1 : 0;
	GUARD_END
}

int mcbx_chan_close(mcbx_engine *e, mcbx_chan ch, int32_t timeout_ms) {
	GUARD_BEGIN
	if (!e)
		return fail(MCBX_EINVAL, "no engine");
	return e->close_channel(ch, Clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0)));
	GUARD_END
}

int mcbx_post(mcbx_engine *e, mcbx_chan ch, int32_t op, const mcbx_sge *v, int32_t n, uint64_t cookie) {
	GUARD_BEGIN
	if (!e || !v || n <= 0 || (op != MCBX_OP_WRITE && op != MCBX_OP_READ))
		return fail(MCBX_EINVAL, "bad mcbx_post arguments");
	if (e->closing.load())
		return fail(MCBX_ECLOSED, "engine closing");
	auto batch = std::make_shared<std::vector<rw_memp_t>>(static_cast<size_t>(n));
	for (int32_t i = 0; i < n; i++) {
		rw_memp_t &m = (*batch)[i];
		m.sg.addr = v[i].laddr;
		m.sg.length = v[i].len;
		m.sg.lkey = v[i].lkey;
		m.data.d_type = v[i].mem_type == MCBX_MEM_GPU ? accl::barex::GPU : accl::barex::CPU;
		m.data.device_id = v[i].device_id;
		m.r_addr = v[i].raddr;
		m.r_key = v[i].rkey;
		m.r_ttl_ms = UINT64_MAX;
	}
	std::shared_ptr<Shared> sh = e->sh;
	XChannel *xch;
	uint32_t idx = static_cast<uint32_t>(ch), gen = static_cast<uint32_t>(ch >> 32);
	{
		std::lock_guard<std::mutex> lk(sh->mu);
		Slot *s = sh->find(ch);
		if (!s)
			return fail(MCBX_EBADCHAN, "bad channel handle");
		if (s->closing || !s->ch->IsActive())
			return fail(MCBX_EINACTIVE, "channel inactive");
		xch = s->ch;
		s->inflight++;
	}
	auto st = std::make_shared<PostState>();
	auto settle = [sh, idx, gen]() { // sh->mu held
		if (idx < sh->slots.size() && sh->slots[idx].gen == gen && sh->slots[idx].inflight > 0)
			sh->slots[idx].inflight--;
		sh->cv.notify_all();
	};
	auto cb = [sh, st, settle, cookie](Status s) {
		int32_t status = status_code(s);
		{
			std::lock_guard<std::mutex> g(st->mu);
			if (st->state == PostState::kRefused)
				return; // the post already reported failure
			if (st->state == PostState::kPosting) {
				st->state = PostState::kEarly;
				st->status = status;
				return; // the poster queues it
			}
		}
		{
			std::lock_guard<std::mutex> g(sh->mu);
			settle();
		}
		sh->push(cookie, status);
	};
	// done_inline: the callback runs on a barex IO thread; it only takes
	// two short locks and writes the eventfd.
	BarexResult r = op == MCBX_OP_WRITE ? xch->WriteBatch(batch, cb, true) : xch->ReadBatch(batch, cb, true);
	bool early;
	int32_t early_status;
	{
		std::lock_guard<std::mutex> g(st->mu);
		early = st->state == PostState::kEarly;
		early_status = st->status;
		if (!early)
			st->state = ok(r) ? PostState::kPosted : PostState::kRefused;
	}
	if (early) {
		// The callback ran before the post returned: it is the one
		// completion, whatever the return value said.
		{
			std::lock_guard<std::mutex> g(sh->mu);
			settle();
		}
		sh->push(cookie, early_status);
		return MCBX_OK;
	}
	if (!ok(r)) {
		std::lock_guard<std::mutex> g(sh->mu);
		settle();
		return fail(r == accl::barex::BAREX_ERR_QUEUE_FULL ? MCBX_EAGAIN : MCBX_EIO,
			    std::string(op == MCBX_OP_WRITE ? "WriteBatch: " : "ReadBatch: ") + result_text(r));
	}
	return MCBX_OK;
	GUARD_END
}

int mcbx_poll(mcbx_engine *e, mcbx_done *out, int32_t cap) {
	GUARD_BEGIN
	if (!e || (cap > 0 && !out))
		return fail(MCBX_EINVAL, "bad mcbx_poll arguments");
	std::lock_guard<std::mutex> lk(e->sh->mu);
	int32_t k = 0;
	while (k < cap && !e->sh->done.empty()) {
		out[k++] = e->sh->done.front();
		e->sh->done.pop_front();
	}
	return k;
	GUARD_END
}

int mcbx_event_fd(mcbx_engine *e) { return e ? e->sh->efd : fail(MCBX_EINVAL, "no engine"); }

int mcbx_close_engine(mcbx_engine *e, int32_t timeout_ms) {
	GUARD_BEGIN
	if (!e)
		return fail(MCBX_EINVAL, "no engine");
	std::unique_ptr<mcbx_engine> owned(e);
	e->teardown(Clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0)));
	return MCBX_OK;
	GUARD_END
}

} // extern "C"
