import { defineConfig } from 'vitest/config'
import react from '@vitejs/plugin-react'

// Built into the operator package (api.Service serves it at /ui/); every asset local, no CDN.
export default defineConfig({
  base: '/ui/',
  plugins: [react()],
  build: {
    outDir: '../operator/compozy_operator/api_service/ui_dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 1500,
  },
  test: { environment: 'node', include: ['src/**/*.test.ts'] },
})
