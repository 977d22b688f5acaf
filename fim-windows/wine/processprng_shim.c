/*
 * bcryptprimitives.dll shim for running Rust (>= 1.78) Windows test binaries
 * under Wine 8.0, which lacks ProcessPrng. Rust's std calls ProcessPrng for
 * HashMap seeds and random numbers; this forwards to advapi32's
 * SystemFunction036 (RtlGenRandom), which Wine implements.
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll processprng_shim.c -ladvapi32
 * Test-only: never shipped with fim-windows.exe.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    /* RtlGenRandom takes a ULONG: feed large requests in chunks. */
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance; (void)reason; (void)reserved;
    return TRUE;
}
