// Small socket helpers.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace strata {

// A TCP port on loopback that was free a moment ago (bind port 0, read it
// back, close). Racy by nature: for tests, benchmarks and local launchers.
inline int free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// The local address this host uses to reach `host` (a name or an IPv4 or
// IPv6 address): the source address the kernel's routing picks for it,
// found by connect()ing a UDP socket, which sends nothing. So a rank binds
// where its peers can reach it -- the interface towards the rendezvous
// host -- and not to whatever its own host name resolves to (often
// 127.0.0.1). "" when `host` does not resolve or no route leads there.
std::string route_source_address(const std::string& host, int port);

}  // namespace strata
