/* SHA-256 (FIPS 180-4), small and self-contained: pair_style mlmd checks a model file's weights against the
   checksum on its model card (mlmd.deploy.export.weights_sha256) with it. No LAMMPS or torch headers. */

#ifndef MLMD_SHA256_H
#define MLMD_SHA256_H

#include <cstddef>
#include <cstdint>
#include <string>

namespace mlmd {

class Sha256 {
 public:
  Sha256();
  void update(const void *data, std::size_t n);
  void update(const std::string &s) { update(s.data(), s.size()); }
  std::string hexdigest();    // ends the message: lowercase hex of the 32-byte digest (call once)

 private:
  void block(const unsigned char *p);    // one 64-byte block into state_
  std::uint32_t state_[8];
  unsigned char buf_[64];
  std::size_t buffered_ = 0;     // bytes in buf_
  std::uint64_t length_ = 0;     // message length in bytes
};

std::string sha256_hex(const void *data, std::size_t n);

}    // namespace mlmd

#endif
