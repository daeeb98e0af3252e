// A group of ranks and the communication they do together.
//
// Every operation returns an async Work handle. Work::wait() blocks until the
// operation finished on this rank, and throws CommError (TimeoutError when the
// group's timeout elapsed) whose message names the operation, the group, this
// rank and, for point-to-point operations, the peer. A rank that dies or
// stalls therefore makes the others fail within the timeout, never hang.
//
// Collectives (all_reduce, broadcast, all_gather, reduce_scatter, barrier)
// must be called by every rank of the group in the same order with tensors of
// the same shape and dtype. Tensors passed in must stay alive and untouched
// until wait() returns.
//
// Thread safety: one thread issues operations; wait() may be called from any
// thread. Implementations: gloo (CPU, LibTorch c10d), mpi, nccl.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace strata::dist {

enum class ReduceOp { kSum, kAvg, kMax, kMin };

// What a backend can do; code asks this instead of comparing names.
enum class Capability {
  kHostMemory,    // moves CPU tensors (gloo, mpi, self)
  kDeviceMemory,  // moves GPU tensors (nccl, self)
  kNative16Bit,   // carries fp16/bf16 as they are (nccl, self); gloo and mpi widen to fp32
};

const char* reduce_op_name(ReduceOp op);

class Work {
 public:
  virtual ~Work() = default;
  // Blocks until done; throws CommError / TimeoutError on failure.
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The group's name in messages ("world", "dp", "tp", ...).
  virtual const std::string& name() const = 0;
  // Backend name for messages: "gloo", "mpi", "nccl", "self".
  virtual const char* backend() const = 0;
  virtual bool supports(Capability capability) const = 0;

  // Collective. In place: every rank's `tensor` becomes the reduction over
  // ranks. kAvg divides the sum by size().
  [[nodiscard]] virtual std::unique_ptr<Work> all_reduce(at::Tensor& tensor,
                                                         ReduceOp op) = 0;
  // Collective. `tensor` on every rank becomes root's.
  [[nodiscard]] virtual std::unique_ptr<Work> broadcast(at::Tensor& tensor,
                                                        int root) = 0;
  // Collective. outputs[r] receives rank r's `input`; size() outputs, each
  // shaped like `input`.
  [[nodiscard]] virtual std::unique_ptr<Work> all_gather(
      std::vector<at::Tensor>& outputs, const at::Tensor& input) = 0;
  // Collective. `output` on rank r becomes the reduction over ranks of
  // inputs[r]; size() inputs, each shaped like `output`.
  [[nodiscard]] virtual std::unique_ptr<Work> reduce_scatter(
      at::Tensor& output, std::vector<at::Tensor>& inputs, ReduceOp op) = 0;
  // Point to point: matched by (peer, tag) with the peer's recv / send.
  [[nodiscard]] virtual std::unique_ptr<Work> send(const at::Tensor& tensor,
                                                   int peer, int tag) = 0;
  [[nodiscard]] virtual std::unique_ptr<Work> recv(at::Tensor& tensor,
                                                   int peer, int tag) = 0;
  // Collective. Returns once every rank has entered the barrier.
  [[nodiscard]] virtual std::unique_ptr<Work> barrier() = 0;

  // Collective, blocking: the ranks that pass the same `color` form a new
  // group named `name`, ranked by `key` (ties: by rank in this group). The
  // new group has this group's backend and timeout; a group of one rank is
  // a self communicator (no connections). Every rank of this group calls
  // split the same number of times in the same order.
  [[nodiscard]] virtual std::shared_ptr<Communicator> split(
      int color, int key, const std::string& name) = 0;
};

// A group of one rank: collectives complete at once (all_reduce and
// broadcast leave the tensor as it is, all_gather and reduce_scatter copy),
// point-to-point is an error. What a mesh axis of size 1 uses.
std::shared_ptr<Communicator> make_self_communicator(
    const std::string& name, std::chrono::milliseconds timeout = std::chrono::milliseconds(60000));

// This rank's place in the group that split(color, key) makes: for colors
// and keys all-gathered from every rank of the parent (index = parent rank),
// returns {rank in the new group, size of the new group}.
std::pair<int, int> split_position(const std::vector<int64_t>& colors,
                                   const std::vector<int64_t>& keys,
                                   int parent_rank);

// Checks the shapes and dtypes of a reduce_scatter call (ConfigError naming
// the mismatch); backends call it before communicating.
void check_reduce_scatter_args(const Communicator& comm,
                               const at::Tensor& output,
                               const std::vector<at::Tensor>& inputs);

// The rendezvous store ranks use to find each other (c10d's Store inside).
class Store;

struct TcpStoreOptions {
  std::string host = "127.0.0.1";  // rank 0's address
  int port = 0;                    // 0 (server only): pick a free port
  bool is_server = false;          // true on rank 0
  int world = 1;                   // ranks that will connect
  std::chrono::milliseconds timeout{30000};  // to connect and for every get
};

// A TCP key-value store (rank 0 serves, everyone connects).
std::shared_ptr<Store> make_tcp_store(const TcpStoreOptions& options);
// An in-process store, for ranks that are threads of one process (tests).
std::shared_ptr<Store> make_memory_store();
// The port a TCP store listens on (after binding port 0), 0 for others.
int store_port(const Store& store);

struct GlooOptions {
  std::shared_ptr<Store> store;  // rendezvous; shared by all ranks
  int rank = 0;                  // in [0, size)
  int size = 1;                  // >= 1
  std::string name = "world";    // group name; also namespaces the store keys
  std::chrono::milliseconds timeout{30000};  // per operation
  std::string hostname = "127.0.0.1";  // interface address gloo binds to
};

// Collective over the store: every rank of the group calls it.
std::shared_ptr<Communicator> make_gloo_communicator(const GlooOptions& options);

// NCCL (CUDA tensors on the current device). Exists only in builds against
// a CUDA LibTorch (strata/config.h: STRATA_TORCH_CUDA).
struct NcclOptions {
  std::shared_ptr<Store> store;  // rendezvous; carries the NCCL unique id
  int rank = 0;
  int size = 1;
  std::string name = "world";
  std::chrono::milliseconds timeout{60000};  // watchdog, per operation
};

std::shared_ptr<Communicator> make_nccl_communicator(const NcclOptions& options);

// Where a tensor computed on `compute` has to be to travel over `c`: the
// compute device when the backend moves it, else the CPU.
at::Device transport_device(const Communicator& c, at::Device compute);

}  // namespace strata::dist
