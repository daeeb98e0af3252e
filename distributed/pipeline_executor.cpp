#include "distributed/pipeline_executor.h"

#include <torch/autograd.h>

#include <map>

#include "core/error.h"

namespace strata::dist {
namespace {

// Note [Pipeline messages].
constexpr int kActivation = 1;
constexpr int kGrad = 2;
constexpr int kHeader = 3;
constexpr int kTied = 4;
constexpr int64_t kMaxRank = 8;

struct Held {  // one microbatch between its forward and its backward
  at::Tensor input;   // the received activation (requires grad); undefined on stage 0
  at::Tensor output;  // what was sent on (or the loss, last stage)
  at::Tensor grad;    // the output's gradient, received
};

}  // namespace

PipelineExecutor::PipelineExecutor(std::shared_ptr<Communicator> pp, std::string schedule,
                                   int microbatches)
    : pp_(pp ? std::move(pp) : make_self_communicator("pp")),
      microbatches_(microbatches),
      actions_(pipeline_schedule(schedule, pp_->size(), pp_->rank(), microbatches)) {}

void PipelineExecutor::send_activation(const at::Tensor& y) {
  const at::Tensor data = y.detach().contiguous();
  STRATA_CHECK_T(Error, data.dim() <= kMaxRank, "pipeline: stage ", stage(), " sends a ",
                 data.dim(), "-d activation; at most ", kMaxRank, " dimensions travel");
  at::Tensor header = at::zeros({kMaxRank + 2}, at::kLong);
  header[0] = data.dim();
  header[1] = static_cast<int64_t>(data.scalar_type());
  for (int64_t d = 0; d < data.dim(); ++d) header[d + 2] = data.size(d);
  // The header lives in host memory: NCCL moves device tensors only.
  header = header.to(data.device());
  sends_.emplace_back(pp_->send(header, stage() + 1, kHeader), header);
  sends_.emplace_back(pp_->send(data, stage() + 1, kActivation), data);
}

at::Tensor PipelineExecutor::recv_activation() {
  // Received tensors land where this stage's inputs are (every stage
  // loads the same batch onto its own device).
  at::Tensor header = at::empty({kMaxRank + 2}, at::TensorOptions(at::kLong).device(device_));
  pp_->recv(header, stage() - 1, kHeader)->wait();
  const at::Tensor h = header.cpu();
  const int64_t rank = h[0].item<int64_t>();
  std::vector<int64_t> shape;
  for (int64_t d = 0; d < rank; ++d) shape.push_back(h[d + 2].item<int64_t>());
  at::Tensor data = at::empty(shape, at::TensorOptions(static_cast<at::ScalarType>(
                                                           h[1].item<int64_t>()))
                                         .device(device_));
  pp_->recv(data, stage() - 1, kActivation)->wait();
  return data;
}

void PipelineExecutor::wait_sends() {
  for (auto& s : sends_) s.first->wait();
  sends_.clear();
}

at::Tensor PipelineExecutor::train_step(const at::Tensor& inputs, const StageFunctions& fns) {
  const int m = microbatches_;
  STRATA_CHECK_T(ConfigError, inputs.size(0) % m == 0, "pipeline: a batch of ",
                 inputs.size(0), " samples cannot be split into ", m,
                 " equal microbatches; make data.batch_size a multiple of "
                 "distributed.pipeline_parallel.microbatches");
  device_ = inputs.device();
  const std::vector<at::Tensor> chunks = inputs.chunk(m, 0);
  std::map<int, Held> held;
  at::Tensor loss_sum;
  peak_ = 0;
  int backwards_left = m;
  for (const PipeAction& a : actions_) {
    Held& h = held[a.microbatch];
    switch (a.op) {
      case PipeOp::kRecvActivation:
        h.input = recv_activation().requires_grad_(true);
        break;
      case PipeOp::kForward: {
        at::Tensor y = fns.forward(first() ? chunks[a.microbatch] : h.input, a.microbatch);
        if (last()) {
          const at::Tensor loss = fns.loss(y, a.microbatch);
          const at::Tensor l = loss.detach().to(at::kDouble);
          loss_sum = loss_sum.defined() ? loss_sum + l : l;
          h.output = loss / static_cast<double>(m);
          if (fns.scale_loss) h.output = fns.scale_loss(h.output);
        } else {
          h.output = y;
        }
        peak_ = std::max(peak_, static_cast<int>(held.size()));
        break;
      }
      case PipeOp::kSendActivation:
        send_activation(h.output);
        break;
      case PipeOp::kRecvGrad:
        h.grad = at::empty_like(h.output, at::MemoryFormat::Contiguous);
        pp_->recv(h.grad, stage() + 1, kGrad)->wait();
        break;
      case PipeOp::kBackward: {
        const bool final_backward = --backwards_left == 0;
        std::function<void()> backward = [&h] {
          if (h.grad.defined()) {
            torch::autograd::backward({h.output}, {h.grad});
          } else {
            h.output.backward();
          }
        };
        if (fns.around_backward) {
          fns.around_backward(backward, final_backward);
        } else {
          backward();
        }
        h.output = at::Tensor();
        h.grad = at::Tensor();
        if (first()) held.erase(a.microbatch);
        break;
      }
      case PipeOp::kSendGrad: {
        at::Tensor g = h.input.grad();
        g = g.defined() ? g.contiguous() : at::zeros_like(h.input);
        sends_.emplace_back(pp_->send(g, stage() - 1, kGrad), g);
        held.erase(a.microbatch);
        break;
      }
    }
  }
  wait_sends();
  return last() ? loss_sum / static_cast<double>(m) : at::Tensor();
}

at::Tensor PipelineExecutor::forward(const at::Tensor& inputs,
                                     const std::function<at::Tensor(const at::Tensor&)>& fn) {
  device_ = inputs.device();
  at::Tensor x = first() ? inputs : recv_activation();
  at::Tensor y = fn(x);
  if (last()) return y;
  send_activation(y);
  wait_sends();
  return at::Tensor();
}

void sum_tied_gradients(torch::nn::Module& stage, const std::string& name,
                        Communicator& pp) {
  const int p = pp.size(), s = pp.rank();
  if (p == 1 || (s != 0 && s != p - 1)) return;
  auto params = stage.named_parameters();
  at::Tensor* w = params.find(name);
  STRATA_INTERNAL_ASSERT(w != nullptr, "pipeline stage ", s, " has no tied parameter ", name);
  at::Tensor mine = w->grad().defined() ? w->grad().contiguous() : at::zeros_like(*w);
  at::Tensor theirs = at::empty_like(mine);
  const int peer = s == 0 ? p - 1 : 0;
  auto sent = pp.send(mine, peer, kTied);
  pp.recv(theirs, peer, kTied)->wait();
  sent->wait();
  w->mutable_grad() = mine + theirs;
}

}  // namespace strata::dist
