// Optional: a new AI Services account with a Foundry project and one model deployment.
// The agent itself (asst_...) is data-plane and is created afterwards (docs/deploy.md).
param name string
param location string
param tags object = {}
param projectName string
param modelName string
param modelVersion string
param modelCapacity int

resource account 'Microsoft.CognitiveServices/accounts@2025-06-01' = {
  // checkov:skip=CKV_AZURE_134:The app reaches the agent over the public endpoint (consumption Container Apps have no private endpoints); local auth is off, so only Entra identities with the roles get in.
  name: name
  location: location
  tags: tags
  kind: 'AIServices'
  sku: {
    name: 'S0'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    allowProjectManagement: true
    customSubDomainName: name
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

resource project 'Microsoft.CognitiveServices/accounts/projects@2025-06-01' = {
  parent: account
  name: projectName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    displayName: projectName
    description: 'chatsite agent project'
  }
}

// The account takes one operation at a time: created alongside the project, the
// deployment fails now and then with RequestConflict ("Another operation is being
// performed on the parent resource").
resource modelDeployment 'Microsoft.CognitiveServices/accounts/deployments@2025-06-01' = {
  parent: account
  name: modelName
  sku: {
    name: 'GlobalStandard'
    capacity: modelCapacity
  }
  properties: {
    model: {
      format: 'OpenAI'
      name: modelName
      version: modelVersion
    }
  }
  dependsOn: [
    project
  ]
}

output name string = account.name
output projectEndpoint string = 'https://${name}.services.ai.azure.com/api/projects/${project.name}'
