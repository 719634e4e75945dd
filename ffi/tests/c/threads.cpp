// Multi-threaded C++: std::thread, new/delete and standard containers,
// objects created in one thread and destroyed in another. Output is
// deterministic (counts and checksums), so a run under LD_PRELOAD must print
// exactly what a run without it prints.
#include <cstdint>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <condition_variable>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Node {
    std::uint64_t id;
    std::string name;
    std::vector<std::uint32_t> data;
};

class Channel {
  public:
    void push(std::unique_ptr<Node> n) {
        std::unique_lock<std::mutex> l(m_);
        q_.push_back(std::move(n));
        cv_.notify_one();
    }
    void close() {
        std::unique_lock<std::mutex> l(m_);
        closed_ = true;
        cv_.notify_all();
    }
    std::unique_ptr<Node> pop() {
        std::unique_lock<std::mutex> l(m_);
        cv_.wait(l, [&] { return !q_.empty() || closed_; });
        if (q_.empty()) return nullptr;
        auto n = std::move(q_.front());
        q_.pop_front();
        return n;
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<std::unique_ptr<Node>> q_;
    bool closed_ = false;
};

std::uint64_t checksum(const Node& n) {
    std::uint64_t h = n.id * 1469598103934665603ull;
    for (char c : n.name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    for (auto v : n.data) h = (h ^ v) * 1099511628211ull;
    return h;
}

constexpr int kThreads = 4;
constexpr int kPerThread = 40000;

}  // namespace

int main() {
    std::vector<Channel> chans(kThreads);
    std::vector<std::uint64_t> sent(kThreads, 0), received(kThreads, 0);
    std::vector<long> count(kThreads, 0);
    std::vector<std::thread> producers, consumers;
    for (int t = 0; t < kThreads; ++t) {
        consumers.emplace_back([&, t] {
            std::map<std::uint64_t, std::string> seen;
            while (auto n = chans[t].pop()) {
                received[t] += checksum(*n);
                ++count[t];
                if (n->id % 64 == 0) seen.emplace(n->id, n->name);
                if (seen.size() > 200) seen.erase(seen.begin());
            }
        });
    }
    for (int t = 0; t < kThreads; ++t) {
        producers.emplace_back([&, t] {
            std::vector<std::unique_ptr<int[]>> scratch;
            for (int i = 0; i < kPerThread; ++i) {
                auto n = std::make_unique<Node>();
                n->id = static_cast<std::uint64_t>(t) * 1000000 + i;
                n->name = "node-" + std::to_string(t) + "-" + std::to_string(i) + std::string(i % 50, 'x');
                n->data.resize(i % 300);
                for (std::size_t k = 0; k < n->data.size(); ++k) n->data[k] = static_cast<std::uint32_t>(k * i);
                sent[(t + 1) % kThreads] += checksum(*n);
                chans[(t + 1) % kThreads].push(std::move(n));
                scratch.emplace_back(new int[i % 1000 + 1]);
                if (scratch.size() > 100) scratch.erase(scratch.begin(), scratch.begin() + 50);
            }
        });
    }
    for (auto& p : producers) p.join();
    for (auto& c : chans) c.close();
    for (auto& c : consumers) c.join();
    bool ok = true;
    long total = 0;
    for (int t = 0; t < kThreads; ++t) {
        std::printf("channel %d: %ld objects, checksum %016llx\n", t, count[t],
                    static_cast<unsigned long long>(received[t]));
        ok = ok && sent[t] == received[t] && count[t] == kPerThread;
        total += count[t];
    }
    std::printf("threads.cpp: %ld objects, %s\n", total, ok ? "ok" : "MISMATCH");
    return ok ? 0 : 1;
}
