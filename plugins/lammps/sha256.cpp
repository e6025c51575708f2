/* SHA-256 as specified in FIPS 180-4 (section 6.2): see sha256.h. */

#include "sha256.h"

#include <cstring>

namespace mlmd {

namespace {
// first 32 bits of the fractional parts of the cube roots of the first 64 primes (FIPS 180-4, 4.2.2)
const std::uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline std::uint32_t rotr(std::uint32_t x, int n)
{
  return (x >> n) | (x << (32 - n));
}
}    // namespace

Sha256::Sha256()
{
  // first 32 bits of the fractional parts of the square roots of the first 8 primes (FIPS 180-4, 5.3.3)
  const std::uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::memcpy(state_, h0, sizeof(state_));
}

void Sha256::block(const unsigned char *p)
{
  std::uint32_t w[64];
  for (int t = 0; t < 16; t++)    // the block's words, big-endian
    w[t] = (std::uint32_t(p[4 * t]) << 24) | (std::uint32_t(p[4 * t + 1]) << 16) |
        (std::uint32_t(p[4 * t + 2]) << 8) | std::uint32_t(p[4 * t + 3]);
  for (int t = 16; t < 64; t++) {
    const std::uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
    const std::uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
    w[t] = w[t - 16] + s0 + w[t - 7] + s1;
  }
  std::uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
  std::uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
  for (int t = 0; t < 64; t++) {
    const std::uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
    const std::uint32_t ch = (e & f) ^ (~e & g);
    const std::uint32_t t1 = h + S1 + ch + K[t] + w[t];
    const std::uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
    const std::uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
    const std::uint32_t t2 = S0 + maj;
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  state_[0] += a;
  state_[1] += b;
  state_[2] += c;
  state_[3] += d;
  state_[4] += e;
  state_[5] += f;
  state_[6] += g;
  state_[7] += h;
}

void Sha256::update(const void *data, std::size_t n)
{
  const unsigned char *p = static_cast<const unsigned char *>(data);
  length_ += n;
  if (buffered_ > 0) {    // complete the partial block first
    const std::size_t take = n < 64 - buffered_ ? n : 64 - buffered_;
    std::memcpy(buf_ + buffered_, p, take);
    buffered_ += take;
    p += take;
    n -= take;
    if (buffered_ < 64) return;
    block(buf_);
    buffered_ = 0;
  }
  for (; n >= 64; p += 64, n -= 64) block(p);
  std::memcpy(buf_, p, n);
  buffered_ = n;
}

std::string Sha256::hexdigest()
{
  // padding (FIPS 180-4, 5.1.1): a 1 bit, zeros up to 56 bytes mod 64, the length in bits (64-bit big-endian)
  const std::uint64_t bits = length_ * 8;
  const unsigned char one = 0x80, zero = 0x00;
  update(&one, 1);
  while (buffered_ != 56) update(&zero, 1);
  unsigned char len[8];
  for (int k = 0; k < 8; k++) len[k] = static_cast<unsigned char>(bits >> (56 - 8 * k));
  update(len, 8);
  static const char *hex = "0123456789abcdef";
  std::string out;
  out.reserve(64);
  for (std::uint32_t s : state_)
    for (int shift = 28; shift >= 0; shift -= 4) out.push_back(hex[(s >> shift) & 0xf]);
  return out;
}

std::string sha256_hex(const void *data, std::size_t n)
{
  Sha256 h;
  h.update(data, n);
  return h.hexdigest();
}

}    // namespace mlmd
